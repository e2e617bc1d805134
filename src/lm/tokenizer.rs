//! The SmolLM2 tokenizer, rebuilt from the GGUF metadata.
//!
//! Why not candle's `TokenizerFromGguf`: for this model it adds a prefix
//! space (`"go"` becomes id 685 instead of 2345), so every score would be of
//! text the model never saw. The metadata (`tokenizer.ggml.pre = "smollm"`)
//! describes the Hugging Face tokenizer of SmolLM2, which we rebuild with the
//! `tokenizers` crate:
//!
//! * model: byte-level BPE from `tokenizer.ggml.tokens` and `.merges`;
//! * pre-tokenizer: a sequence of `Digits` (each digit alone) and `ByteLevel`
//!   (no prefix space, GPT-2 regex);
//! * decoder: `ByteLevel`;
//! * control and user-defined tokens (GGUF token types 3 and 4, ids 0..16
//!   here, ChatML's `<|im_start|>` and `<|im_end|>` among them) are special
//!   tokens: matched whole in the input text, never split by BPE.
//!
//! The tests hold the ids to the ones llama.cpp gives for fixed strings.

use ahash::AHashMap;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use super::error::{LmError, Result};
use super::gguf::GgufFile;

/// GGUF token type of control tokens.
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of user-defined tokens.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The ChatML start-of-turn marker.
pub const IM_START: &str = "<|im_start|>";
/// The ChatML end-of-turn marker (SmolLM2's end-of-sequence token).
pub const IM_END: &str = "<|im_end|>";

/// SmolLM2's tokenizer (see the module docs).
pub struct LmTokenizer {
    inner: Tokenizer,
    im_start: u32,
    im_end: u32,
    vocab: usize,
}

impl std::fmt::Debug for LmTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmTokenizer")
            .field("vocab", &self.vocab)
            .field("im_start", &self.im_start)
            .field("im_end", &self.im_end)
            .finish()
    }
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let values = file.meta(key)?.to_vec().map_err(|e| file.corrupt(format!("metadata `{key}`: {e}")))?;
    values
        .iter()
        .map(|v| v.to_string().map(String::as_str).map_err(|e| file.corrupt(format!("metadata `{key}`: {e}"))))
        .collect()
}

impl LmTokenizer {
    /// Rebuilds the tokenizer from the metadata of `file`.
    ///
    /// Errors: [`LmError::CorruptWeights`] when a tokenizer key is missing or
    /// malformed (e.g. the pre-tokenizer is not `smollm`, a merge is not two
    /// tokens, the ChatML markers are absent); [`LmError::Tokenizer`] when the
    /// `tokenizers` crate rejects the vocabulary.
    ///
    /// ```no_run
    /// use g2po::lm::{GgufFile, LmTokenizer};
    /// let tok = LmTokenizer::from_gguf(&GgufFile::open_default().unwrap()).unwrap();
    /// assert_eq!(tok.encode("go to the fridge").unwrap(), vec![2345, 288, 260, 28867]);
    /// ```
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let model = file.meta("tokenizer.ggml.model")?.to_string().map_err(|e| file.corrupt(e.to_string()))?;
        let pre = file.meta("tokenizer.ggml.pre")?.to_string().map_err(|e| file.corrupt(e.to_string()))?;
        if model != "gpt2" || pre != "smollm" {
            return Err(file
                .corrupt(format!("tokenizer is `{model}` with pre-tokenizer `{pre}`, expected `gpt2` with `smollm`")));
        }
        let tokens = strings(file, "tokenizer.ggml.tokens")?;
        let merges = strings(file, "tokenizer.ggml.merges")?;
        let types = file
            .meta("tokenizer.ggml.token_type")?
            .to_vec()
            .map_err(|e| file.corrupt(format!("metadata `tokenizer.ggml.token_type`: {e}")))?;
        if types.len() != tokens.len() {
            return Err(file.corrupt(format!("{} token types for {} tokens", types.len(), tokens.len())));
        }
        let vocab: AHashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| file.corrupt(format!("merge {m:?} is not two space-separated tokens")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe =
            BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| LmError::Tokenizer(e.to_string()))?;
        let mut inner = Tokenizer::new(bpe);
        let pre: Vec<PreTokenizerWrapper> = vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()];
        inner.with_pre_tokenizer(Some(Sequence::new(pre)));
        inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(false, true, true))));
        let mut special = Vec::new();
        for (token, ty) in tokens.iter().zip(types) {
            let ty = ty.to_i32().map_err(|e| file.corrupt(format!("token type: {e}")))?;
            if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                special.push(AddedToken::from(token.to_string(), true));
            }
        }
        inner.add_special_tokens(special).map_err(|e| LmError::Tokenizer(e.to_string()))?;
        let id = |t: &str| inner.token_to_id(t).ok_or_else(|| file.corrupt(format!("the vocabulary has no `{t}`")));
        let (im_start, im_end) = (id(IM_START)?, id(IM_END)?);
        Ok(Self { im_start, im_end, vocab: tokens.len(), inner })
    }

    /// Token ids of `text`; ChatML markers and other special tokens in the
    /// text become their single ids. No BOS is added (SmolLM2's
    /// `add_bos_token` is false).
    ///
    /// ```no_run
    /// # let tok = g2po::lm::LmTokenizer::from_gguf(&g2po::lm::GgufFile::open_default().unwrap()).unwrap();
    /// assert_eq!(tok.encode("<|im_start|>user\n").unwrap(), vec![1, 4093, 198]);
    /// ```
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| LmError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids` (special tokens included).
    ///
    /// ```no_run
    /// # let tok = g2po::lm::LmTokenizer::from_gguf(&g2po::lm::GgufFile::open_default().unwrap()).unwrap();
    /// assert_eq!(tok.decode(&[2345, 288, 260, 28867]).unwrap(), "go to the fridge");
    /// ```
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.vocab) {
            return Err(LmError::BadInput(format!("token id {bad} is outside the vocabulary of {}", self.vocab)));
        }
        self.inner.decode(ids, false).map_err(|e| LmError::Tokenizer(e.to_string()))
    }

    /// Id of `<|im_start|>`.
    pub fn im_start(&self) -> u32 {
        self.im_start
    }

    /// Id of `<|im_end|>`, which ends every assistant turn (and so every
    /// scored action).
    pub fn im_end(&self) -> u32 {
        self.im_end
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }
}
