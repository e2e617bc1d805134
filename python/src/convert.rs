//! Reading numpy columns in place.
//!
//! Numeric columns must be 1-D and C-contiguous; they are read straight from
//! numpy's buffer (no intermediate array) into the engine's own columns,
//! converting and range-checking in the same pass. Object arrays are walked
//! in place: each element is a borrowed `PyObject*`, and a `str` is read
//! through `PyUnicode_AsUTF8AndSize`, which returns CPython's cached UTF-8 (the
//! string's own bytes for ASCII text) without copying.

use ahash::AHashMap;
use numpy::{PyArray1, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::errors::{Failure, Fallible};

/// An id column factorised into dense indices `0..labels.len()` in first-seen
/// order, with a printable label per index.
#[derive(Debug, Default, Clone)]
pub struct Ids {
    pub dense: Vec<u32>,
    pub labels: Vec<String>,
    /// Every id was a `str` whose label is its exact text, so the labels
    /// sort as Python sorts the ids (UTF-8 byte order is code-point order).
    pub all_text: bool,
}

/// The numpy array behind `obj`, checked to be 1-D and C-contiguous.
pub fn array1<'py>(obj: &Bound<'py, PyAny>, argument: &str) -> Fallible<Bound<'py, PyUntypedArray>> {
    let arr = obj.cast::<PyUntypedArray>().map_err(|_| {
        let ty = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
        Failure::type_(argument, None, format!("expected a numpy array, got {ty}"))
    })?;
    if arr.ndim() != 1 {
        return Err(Failure::type_(argument, None, format!("expected a 1-D array, got shape {:?}", arr.shape())));
    }
    if !arr.is_c_contiguous() {
        return Err(Failure::type_(
            argument,
            None,
            format!(
                "the array is not contiguous (stride {} bytes); pass np.ascontiguousarray({argument})",
                arr.strides()[0]
            ),
        ));
    }
    Ok(arr.clone())
}

fn dtype_name(arr: &Bound<'_, PyUntypedArray>) -> String {
    arr.dtype().str().map(|s| s.to_string()).unwrap_or_else(|_| "?".into())
}

fn check_len(argument: &str, len: usize, expected: Option<usize>) -> Fallible<()> {
    match expected {
        Some(n) if n != len => {
            Err(Failure::input(argument, None, format!("has {len} entries but the batch has {n} rows")))
        }
        _ => Ok(()),
    }
}

macro_rules! read_slice {
    ($arr:expr, $t:ty, |$s:ident| $body:expr) => {
        if let Ok(typed) = $arr.cast::<PyArray1<$t>>() {
            let ro = typed.readonly();
            let $s: &[$t] = ro.as_slice().expect("checked contiguous");
            Some($body)
        } else {
            None
        }
    };
}

/// A numeric column of dtype `T`, read in place, or converted when the
/// array has another dtype.
pub enum Column<'py, T: numpy::Element> {
    /// numpy's own buffer, borrowed (no copy).
    Borrowed(numpy::PyReadonlyArray1<'py, T>),
    /// Converted from another dtype.
    Owned(Vec<T>),
}

impl<T: numpy::Element> std::ops::Deref for Column<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Column::Borrowed(ro) => ro.as_slice().expect("checked contiguous"),
            Column::Owned(v) => v,
        }
    }
}

/// `obj` as a [`Column`] of `T`: in place when its dtype is `T` (a 1-D
/// contiguous array of `expected` rows), else through `convert`, which
/// checks the rest.
pub fn column<'py, T: numpy::Element>(
    obj: &Bound<'py, PyAny>,
    argument: &str,
    expected: Option<usize>,
    convert: impl FnOnce(&Bound<'py, PyAny>, &str, Option<usize>) -> Fallible<Vec<T>>,
) -> Fallible<Column<'py, T>> {
    let arr = array1(obj, argument)?;
    check_len(argument, arr.shape()[0], expected)?;
    if let Ok(typed) = arr.cast::<PyArray1<T>>() {
        let ro = typed
            .try_readonly()
            .map_err(|e| Failure::type_(argument, None, format!("the array cannot be read now: {e}")))?;
        return Ok(Column::Borrowed(ro));
    }
    Ok(Column::Owned(convert(obj, argument, expected)?))
}

/// A float column (float64 or float32) as f64.
pub fn floats(obj: &Bound<'_, PyAny>, argument: &str, expected: Option<usize>) -> Fallible<Vec<f64>> {
    let arr = array1(obj, argument)?;
    check_len(argument, arr.shape()[0], expected)?;
    if let Some(v) = read_slice!(arr, f64, |s| s.to_vec()) {
        return Ok(v);
    }
    if let Some(v) = read_slice!(arr, f32, |s| s.iter().map(|&x| x as f64).collect()) {
        return Ok(v);
    }
    Err(Failure::type_(argument, None, format!("expected dtype float64 or float32, got {}", dtype_name(&arr))))
}

/// A bool column.
pub fn bools(obj: &Bound<'_, PyAny>, argument: &str, expected: Option<usize>) -> Fallible<Vec<bool>> {
    let arr = array1(obj, argument)?;
    check_len(argument, arr.shape()[0], expected)?;
    if let Some(v) = read_slice!(arr, bool, |s| s.to_vec()) {
        return Ok(v);
    }
    Err(Failure::type_(argument, None, format!("expected dtype bool, got {}", dtype_name(&arr))))
}

/// A non-negative integer column that fits u32 (steps, token counts).
pub fn counts(obj: &Bound<'_, PyAny>, argument: &str, expected: Option<usize>) -> Fallible<Vec<u32>> {
    let arr = array1(obj, argument)?;
    check_len(argument, arr.shape()[0], expected)?;
    fn convert<T: Copy + TryInto<u32> + std::fmt::Display>(s: &[T], argument: &str) -> Fallible<Vec<u32>> {
        let mut out = Vec::with_capacity(s.len());
        for (row, &x) in s.iter().enumerate() {
            match x.try_into() {
                Ok(v) => out.push(v),
                Err(_) => {
                    return Err(Failure::input(
                        argument,
                        Some(row),
                        format!("{x} is not an integer in 0..=4294967295"),
                    ));
                }
            }
        }
        Ok(out)
    }
    macro_rules! try_int {
        ($($t:ty),*) => {$(
            if let Some(v) = read_slice!(arr, $t, |s| convert(s, argument)) {
                return v;
            }
        )*};
    }
    try_int!(i64, i32, u32, u64, i16, u16, i8, u8);
    Err(Failure::type_(argument, None, format!("expected an integer dtype, got {}", dtype_name(&arr))))
}

/// A key column: uint64, or int64 reinterpreted bit for bit.
pub fn keys(obj: &Bound<'_, PyAny>, argument: &str, expected: Option<usize>) -> Fallible<Vec<u64>> {
    let arr = array1(obj, argument)?;
    check_len(argument, arr.shape()[0], expected)?;
    if let Some(v) = read_slice!(arr, u64, |s| s.to_vec()) {
        return Ok(v);
    }
    if let Some(v) = read_slice!(arr, i64, |s| s.iter().map(|&x| x as u64).collect()) {
        return Ok(v);
    }
    Err(Failure::type_(argument, None, format!("expected dtype uint64 or int64, got {}", dtype_name(&arr))))
}

/// Factorises an id column: an object array of any hashable values (Python
/// equality decides, so 1, 1.0 and True are one id, as in a dict), or an
/// integer array.
///
/// Fast paths, in order: the same object as on the previous row; an object
/// already seen (keyed by its address: within one array a trainer's ids are a
/// few hundred objects repeated, since pickling keeps identity); a `str`,
/// keyed by its UTF-8 bytes. Anything else goes through a Python dict.
pub fn ids(obj: &Bound<'_, PyAny>, argument: &str, expected: Option<usize>) -> Fallible<Ids> {
    let arr = array1(obj, argument)?;
    check_len(argument, arr.shape()[0], expected)?;
    macro_rules! try_int {
        ($($t:ty),*) => {$(
            if let Some(v) = read_slice!(arr, $t, |s| int_ids(s)) {
                return Ok(v);
            }
        )*};
    }
    try_int!(i64, i32, u32, u64, i16, u16, i8, u8);
    if let Ok(objects) = arr.cast::<PyArray1<Py<PyAny>>>() {
        let ro = objects.readonly();
        let slice = ro.as_slice().expect("checked contiguous");
        return object_ids(obj.py(), slice, argument);
    }
    Err(Failure::type_(
        argument,
        None,
        format!("expected an object array of hashable ids or an integer array, got dtype {}", dtype_name(&arr)),
    ))
}

fn int_ids<T: Copy + Eq + std::hash::Hash + std::fmt::Display>(s: &[T]) -> Ids {
    let mut map: AHashMap<T, u32> = AHashMap::new();
    let mut out = Ids { dense: Vec::with_capacity(s.len()), labels: Vec::new(), all_text: false };
    let mut prev: Option<(T, u32)> = None;
    for &x in s {
        let id = match prev {
            Some((p, id)) if p == x => id,
            _ => {
                let next = out.labels.len() as u32;
                let id = *map.entry(x).or_insert(next);
                if id == next {
                    out.labels.push(x.to_string());
                }
                prev = Some((x, id));
                id
            }
        };
        out.dense.push(id);
    }
    out
}

/// The UTF-8 bytes of a `str` object, borrowed from CPython's cache.
///
/// # Safety
/// `ptr` must be a live `str` (or subclass) that outlives the returned slice.
unsafe fn str_bytes<'a>(ptr: *mut ffi::PyObject) -> Option<&'a [u8]> {
    let mut len: ffi::Py_ssize_t = 0;
    let data = unsafe { ffi::PyUnicode_AsUTF8AndSize(ptr, &mut len) };
    if data.is_null() {
        // Lone surrogates cannot be encoded; the caller falls back to a dict.
        unsafe { ffi::PyErr_Clear() };
        return None;
    }
    Some(unsafe { std::slice::from_raw_parts(data as *const u8, len as usize) })
}

fn object_ids(py: Python<'_>, slice: &[Py<PyAny>], argument: &str) -> Fallible<Ids> {
    let mut out = Ids { dense: Vec::with_capacity(slice.len()), labels: Vec::new(), all_text: true };
    let mut by_address: AHashMap<usize, u32> = AHashMap::new();
    let mut by_text: AHashMap<&[u8], u32> = AHashMap::new();
    let mut other: Option<Bound<'_, PyDict>> = None;
    let mut prev: (usize, u32) = (0, 0);
    for (row, item) in slice.iter().enumerate() {
        let address = item.as_ptr() as usize;
        if address == prev.0 {
            out.dense.push(prev.1);
            continue;
        }
        let id = if let Some(&id) = by_address.get(&address) {
            id
        } else {
            let bound = item.bind(py);
            let next = out.labels.len() as u32;
            // SAFETY: the array holds a reference to every element for the
            // whole call, so the bytes outlive `by_text`.
            let text = if bound.is_instance_of::<PyString>() { unsafe { str_bytes(item.as_ptr()) } } else { None };
            // A subclass of str may order itself otherwise.
            out.all_text &= text.is_some() && bound.is_exact_instance_of::<PyString>();
            let id = match text {
                Some(bytes) => {
                    let id = *by_text.entry(bytes).or_insert(next);
                    if id == next {
                        out.labels.push(String::from_utf8_lossy(bytes).into_owned());
                    }
                    id
                }
                None => {
                    let dict = other.get_or_insert_with(|| PyDict::new(py));
                    let found = dict
                        .get_item(bound)
                        .map_err(|e| Failure::type_(argument, Some(row), format!("the id is not hashable: {e}")))?;
                    match found {
                        Some(v) => v.extract::<u32>().expect("the dict holds our u32 ids"),
                        None => {
                            dict.set_item(bound, next).map_err(|e| {
                                Failure::type_(argument, Some(row), format!("the id is not hashable: {e}"))
                            })?;
                            out.labels.push(label(bound));
                            next
                        }
                    }
                }
            };
            by_address.insert(address, id);
            id
        };
        prev = (address, id);
        out.dense.push(id);
    }
    Ok(out)
}

fn label(obj: &Bound<'_, PyAny>) -> String {
    obj.str().map(|s| s.to_string()).unwrap_or_else(|_| "<id>".into())
}

/// Asks the CPU to fetch the cache line at `p` ahead of use. Anchor texts are
/// separate heap objects that, after a trainer reorders its rows, sit in
/// random order in memory: without prefetching, walking them is bound by
/// memory latency (measured 6x slower than in rollout order).
#[inline(always)]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// How many rows ahead the walks over object arrays prefetch.
pub const PREFETCH_AHEAD: usize = 16;

/// A `str` anchor, borrowed: address and length of its UTF-8 bytes.
#[derive(Clone, Copy)]
pub struct TextRef {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the bytes belong to immutable `str` objects that the caller's array
// keeps alive for the whole call; reading them from another thread is sound.
unsafe impl Send for TextRef {}
unsafe impl Sync for TextRef {}

impl TextRef {
    /// Address of the first byte (for prefetching).
    pub fn ptr(self) -> *const u8 {
        self.ptr
    }

    /// # Safety
    /// The `str` object this came from must still be alive.
    pub unsafe fn as_str<'a>(self) -> &'a str {
        // SAFETY: CPython's UTF-8 cache is valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(self.ptr, self.len)) }
    }
}

/// Keys of an object array of `str`, in one pass that holds the GIL: each
/// object is prefetched whole (a compact `str` keeps its bytes right after its
/// header) a few rows ahead and hashed as soon as it is read. For plain keys
/// (no canonicaliser) this beats reading pointers first and hashing in
/// parallel, since the walk is bound by memory latency, not hashing.
pub fn text_keys_one_pass(
    obj: &Bound<'_, PyAny>,
    argument: &str,
    expected: Option<usize>,
    key: impl Fn(&str) -> u64,
) -> Fallible<Vec<u64>> {
    text_keys_visiting(obj, argument, expected, key, |_, _| {})
}

/// [`text_keys_one_pass`], also calling `visit(object, key)` once per run of
/// rows holding the same object, while that object is still in cache (a
/// second walk over the objects would miss the cache on every row again).
pub fn text_keys_visiting(
    obj: &Bound<'_, PyAny>,
    argument: &str,
    expected: Option<usize>,
    key: impl Fn(&str) -> u64,
    mut visit: impl FnMut(&Py<PyAny>, u64),
) -> Fallible<Vec<u64>> {
    // The text is read right away: prefetch it whole, half as far ahead.
    let ahead = Prefetch { rows: PREFETCH_AHEAD / 2, lines: 5 };
    walk_strs(obj, argument, expected, ahead, |item, text| {
        let k = key(text);
        visit(item, k);
        k
    })
}

/// The texts of an object array of `str`, borrowed in place. `None` or any
/// other object on a row is an error naming the row.
pub fn texts(obj: &Bound<'_, PyAny>, argument: &str, expected: Option<usize>) -> Fallible<Vec<TextRef>> {
    // Only the object's header is read here (the bytes later, elsewhere).
    let ahead = Prefetch { rows: PREFETCH_AHEAD, lines: 1 };
    walk_strs(obj, argument, expected, ahead, |_, text| TextRef { ptr: text.as_ptr(), len: text.len() })
}

/// How far ahead [`walk_strs`] prefetches objects, and how many cache lines
/// of each.
#[derive(Clone, Copy)]
struct Prefetch {
    rows: usize,
    lines: usize,
}

/// `each(object, text)` for every row of an object array of `str`, once per
/// run of rows holding the same object (the others repeat its result). A row
/// that is not a `str`, or one that cannot be encoded as UTF-8, is an error
/// naming the row.
fn walk_strs<T: Copy>(
    obj: &Bound<'_, PyAny>,
    argument: &str,
    expected: Option<usize>,
    ahead: Prefetch,
    mut each: impl FnMut(&Py<PyAny>, &str) -> T,
) -> Fallible<Vec<T>> {
    let arr = array1(obj, argument)?;
    check_len(argument, arr.shape()[0], expected)?;
    let objects = arr.cast::<PyArray1<Py<PyAny>>>().map_err(|_| {
        Failure::type_(argument, None, format!("expected an object array of str, got dtype {}", dtype_name(&arr)))
    })?;
    let ro = objects.readonly();
    let slice = ro.as_slice().expect("checked contiguous");
    let py = obj.py();
    let mut out: Vec<T> = Vec::with_capacity(slice.len());
    let mut prev: Option<(usize, T)> = None;
    for (row, item) in slice.iter().enumerate() {
        if let Some(next) = slice.get(row + ahead.rows) {
            let p = next.as_ptr() as *const u8;
            for line in 0..ahead.lines {
                prefetch(p.wrapping_add(64 * line));
            }
        }
        let address = item.as_ptr() as usize;
        if let Some((same, value)) = prev
            && same == address
        {
            out.push(value);
            continue;
        }
        let bound = item.bind(py);
        if !bound.is_instance_of::<PyString>() {
            let ty = bound.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
            return Err(Failure::type_(argument, Some(row), format!("expected str, got {ty}")));
        }
        // SAFETY: a live str held by the array.
        let bytes = unsafe { str_bytes(item.as_ptr()) }.ok_or_else(|| {
            Failure::input(argument, Some(row), "the text cannot be encoded as UTF-8 (lone surrogate)")
        })?;
        // SAFETY: CPython's UTF-8 form is valid UTF-8.
        let value = each(item, unsafe { std::str::from_utf8_unchecked(bytes) });
        prev = Some((address, value));
        out.push(value);
    }
    Ok(out)
}
