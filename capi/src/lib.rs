//! C API of the bundelta applier: apply a verified patch from C, C++, Swift, Kotlin (JNI) or
//! any language with a C FFI, with the guarantees of the Rust library (every number read from
//! the patch checked, OLD hashed before the first write, every output hashed before it is
//! reported good, memory within a caller-set limit).
//!
//! The header is `capi/include/bundelta.h`, generated from this file by cbindgen. Two ways to
//! apply:
//!
//! - [`bd_apply`]: a single-file patch, with three callbacks: OLD read at an offset, the patch
//!   read front to back (a socket, an HTTP body: no temporary file), the new file written in
//!   order. The bytes reach the write callback as they are made; on any status but
//!   [`BdStatus::Ok`], discard what it received.
//! - [`bd_apply_files`]: paths (a file or a directory bundle): the output appears at its path
//!   only once verified, as `bundelta apply` does.
//!
//! Errors: every function returns a [`BdStatus`]; [`bd_last_error`] gives the message of the
//! last failure on a handle (naming the file, the numbers, and what to do). No Rust panic
//! crosses the boundary: one is caught and reported as [`BdStatus::Panic`].
//!
//! Threads: a handle is used by one thread at a time; the callbacks are called on the thread
//! that called [`bd_apply`], never concurrently.

#![deny(missing_docs)]

use std::ffi::{c_char, c_void, CStr, CString};
use std::io::{self, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use bundelta::{Error, Patcher, ReadAt};

/// What a call did.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BdStatus {
    /// Success.
    Ok = 0,
    /// A null handle, a null or non-UTF-8 path, a null callback.
    InvalidArgument = 1,
    /// Reading or writing failed (a callback returned -1, a file could not be opened).
    Io = 2,
    /// The patch is malformed (truncated, damaged, or not a patch).
    Corrupt = 3,
    /// The patch's whole-file checksum does not match: fetch it again.
    Checksum = 4,
    /// The patch needs a newer applier (a format version or feature this one lacks).
    Unsupported = 5,
    /// The patch needs more memory or makes more output than the limits allow.
    Limit = 6,
    /// OLD is not the version the patch was made from.
    WrongBase = 7,
    /// An output did not match the digest the patch records: nothing to keep.
    OutputMismatch = 8,
    /// The output path exists already.
    OutputExists = 9,
    /// A signature is required and the patch is unsigned.
    Unsigned = 10,
    /// The patch's signature does not verify with the required key.
    Signature = 11,
    /// Any other failure (see [`bd_last_error`]).
    Other = 12,
    /// A bug: a panic was caught at the boundary (please report it with the message).
    Panic = 13,
}

/// Reads up to `len` bytes of OLD at offset `pos` into `buf`. Returns the number of bytes
/// read (fewer is fine; 0 only at or past the end of OLD), or -1 on error.
pub type BdReadAtFn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, buf: *mut u8, len: usize, pos: u64) -> i64>;

/// Reads up to `len` next bytes of the patch into `buf`. Returns the number read (0 only at
/// the end of the patch), or -1 on error.
pub type BdReadFn = Option<unsafe extern "C" fn(ctx: *mut c_void, buf: *mut u8, len: usize) -> i64>;

/// Writes the `len` bytes at `buf` (the next bytes of the new file). Returns the number
/// written (at least 1; the rest is offered again), or -1 on error.
pub type BdWriteFn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, buf: *const u8, len: usize) -> i64>;

/// What a successful apply made.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BdReport {
    /// Regular files written.
    pub files: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// BLAKE3 digest of the new bundle (of the file, for a single-file patch).
    pub digest: [u8; 32],
}

/// An applier with its settings and the message of its last error. Create with
/// [`bd_patcher_new`], free with [`bd_patcher_free`].
pub struct BdPatcher {
    patcher: Patcher,
    error: CString,
}

impl BdPatcher {
    fn fail(&mut self, status: BdStatus, msg: String) -> BdStatus {
        self.error = CString::new(msg.replace('\0', " ")).unwrap_or_default();
        status
    }

    fn result(
        &mut self,
        r: Result<bundelta::ApplyReport, Error>,
        report: *mut BdReport,
    ) -> BdStatus {
        match r {
            Ok(r) => {
                if !report.is_null() {
                    // SAFETY: the caller passes null or a valid, writable BdReport.
                    unsafe {
                        *report = BdReport {
                            files: r.files,
                            bytes: r.bytes,
                            digest: r.digest,
                        }
                    };
                }
                self.error = CString::default();
                BdStatus::Ok
            }
            Err(e) => {
                let s = status_of(&e);
                self.fail(s, e.to_string())
            }
        }
    }
}

fn status_of(e: &Error) -> BdStatus {
    match e {
        Error::Io { .. } => BdStatus::Io,
        Error::Corrupt { .. } => BdStatus::Corrupt,
        Error::Checksum { .. } => BdStatus::Checksum,
        Error::Unsupported { .. } | Error::NotBuiltIn { .. } => BdStatus::Unsupported,
        Error::LimitExceeded { .. } => BdStatus::Limit,
        Error::WrongBase { .. } => BdStatus::WrongBase,
        Error::OutputMismatch { .. } => BdStatus::OutputMismatch,
        Error::OutputExists { .. } => BdStatus::OutputExists,
        Error::InvalidInput { .. } => BdStatus::InvalidArgument,
        Error::Unsigned => BdStatus::Unsigned,
        Error::Signature { .. } => BdStatus::Signature,
        _ => BdStatus::Other,
    }
}

/// Run `f` on the handle, turning a panic into [`BdStatus::Panic`].
fn with(p: *mut BdPatcher, f: impl FnOnce(&mut BdPatcher) -> BdStatus) -> BdStatus {
    if p.is_null() {
        return BdStatus::InvalidArgument;
    }
    // SAFETY: the caller passes a handle from bd_patcher_new, used by one thread at a time.
    let h = unsafe { &mut *p };
    match catch_unwind(AssertUnwindSafe(|| f(h))) {
        Ok(s) => s,
        Err(e) => {
            let what = e
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| e.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            h.fail(BdStatus::Panic, format!("internal error (panic): {what}"))
        }
    }
}

struct CReadAt {
    f: unsafe extern "C" fn(*mut c_void, *mut u8, usize, u64) -> i64,
    ctx: *mut c_void,
}

impl ReadAt for CReadAt {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        // SAFETY: the callback's contract: it writes at most `len` bytes into `buf`.
        let n = unsafe { (self.f)(self.ctx, buf.as_mut_ptr(), buf.len(), pos) };
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= buf.len())
            .ok_or_else(|| io::Error::other(format!("the OLD read callback returned {n}")))
    }
}

struct CRead {
    f: unsafe extern "C" fn(*mut c_void, *mut u8, usize) -> i64,
    ctx: *mut c_void,
}

// SAFETY: the reader is only used on the thread that called bd_apply (the handle's patcher
// decodes serially), so the context pointer never crosses threads.
unsafe impl Send for CRead {}

impl Read for CRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the callback's contract: it writes at most `len` bytes into `buf`.
        let n = unsafe { (self.f)(self.ctx, buf.as_mut_ptr(), buf.len()) };
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= buf.len())
            .ok_or_else(|| io::Error::other(format!("the patch read callback returned {n}")))
    }
}

struct CWrite {
    f: unsafe extern "C" fn(*mut c_void, *const u8, usize) -> i64,
    ctx: *mut c_void,
}

impl Write for CWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // SAFETY: `buf` is valid for `len` bytes for the duration of the call.
        let n = unsafe { (self.f)(self.ctx, buf.as_ptr(), buf.len()) };
        usize::try_from(n)
            .ok()
            .filter(|&n| n >= 1 && n <= buf.len())
            .ok_or_else(|| io::Error::other(format!("the output write callback returned {n}")))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A new applier with the library's defaults: a 12 MiB memory limit, no output limit, no
/// signature required. Never null. Free it with [`bd_patcher_free`].
#[no_mangle]
pub extern "C" fn bd_patcher_new() -> *mut BdPatcher {
    let mut patcher = Patcher::new();
    // Callbacks are called on the caller's thread only.
    patcher.parallel(false);
    Box::into_raw(Box::new(BdPatcher {
        patcher,
        error: CString::default(),
    }))
}

/// Free an applier (null is accepted and ignored).
///
/// # Safety
/// `p` is null or a handle from [`bd_patcher_new`] not freed yet.
#[no_mangle]
pub unsafe extern "C" fn bd_patcher_free(p: *mut BdPatcher) {
    if !p.is_null() {
        // SAFETY: per the contract above, `p` came from Box::into_raw.
        drop(unsafe { Box::from_raw(p) });
    }
}

/// Refuse patches whose apply needs more than `bytes` of heap (default 12 MiB). A patch read
/// through [`bd_apply`] also holds its control and diff streams (compressed) in memory.
///
/// # Safety
/// `p` is a handle from [`bd_patcher_new`].
#[no_mangle]
pub unsafe extern "C" fn bd_patcher_set_memory_limit(p: *mut BdPatcher, bytes: u64) -> BdStatus {
    with(p, |h| {
        h.patcher.memory_limit(bytes);
        BdStatus::Ok
    })
}

/// Refuse patches that make more than `bytes` of output (default: no limit).
///
/// # Safety
/// `p` is a handle from [`bd_patcher_new`].
#[no_mangle]
pub unsafe extern "C" fn bd_patcher_set_output_limit(p: *mut BdPatcher, bytes: u64) -> BdStatus {
    with(p, |h| {
        h.patcher.output_limit(bytes);
        BdStatus::Ok
    })
}

/// Require every patch to be signed by the secret key of this Ed25519 public key (32 bytes,
/// as `bundelta keygen` writes it after decoding). Bytes that are not an Ed25519 public key
/// give `BD_INVALID_ARGUMENT`.
///
/// # Safety
/// `p` is a handle from [`bd_patcher_new`]; `key` points to 32 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_patcher_require_signature(
    p: *mut BdPatcher,
    key: *const u8,
) -> BdStatus {
    with(p, |h| {
        if key.is_null() {
            return h.fail(BdStatus::InvalidArgument, "the public key is null".into());
        }
        let mut k = [0u8; 32];
        // SAFETY: per the contract above, `key` points to 32 readable bytes.
        k.copy_from_slice(unsafe { std::slice::from_raw_parts(key, 32) });
        match bundelta::PublicKey::from_bytes(k) {
            Ok(k) => {
                h.patcher.require_signature(k);
                BdStatus::Ok
            }
            Err(e) => h.fail(BdStatus::InvalidArgument, e.to_string()),
        }
    })
}

/// Apply a single-file patch: OLD read through `old_read` (at offsets), the patch read front
/// to back through `patch_read`, the new file written in order through `out_write`. OLD is
/// checked before the first write; the output is checked (and the patch's checksum and
/// signature) at the end: on any status but [`BdStatus::Ok`], discard what `out_write`
/// received. `report` (may be null) receives what was made.
///
/// # Safety
/// `p` is a handle from [`bd_patcher_new`]; the callbacks follow their contracts
/// ([`BdReadAtFn`], [`BdReadFn`], [`BdWriteFn`]) with their context pointers; `report` is
/// null or points to a writable [`BdReport`].
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn bd_apply(
    p: *mut BdPatcher,
    old_read: BdReadAtFn,
    old_ctx: *mut c_void,
    patch_read: BdReadFn,
    patch_ctx: *mut c_void,
    out_write: BdWriteFn,
    out_ctx: *mut c_void,
    report: *mut BdReport,
) -> BdStatus {
    with(p, |h| {
        let (Some(ro), Some(rp), Some(w)) = (old_read, patch_read, out_write) else {
            return h.fail(BdStatus::InvalidArgument, "a callback is null".into());
        };
        let old = CReadAt {
            f: ro,
            ctx: old_ctx,
        };
        let patch = CRead {
            f: rp,
            ctx: patch_ctx,
        };
        let mut out = CWrite { f: w, ctx: out_ctx };
        let r = h
            .patcher
            .open_reader(patch, "(patch stream)")
            .and_then(|pt| h.patcher.apply_to_writer(&old, pt, &mut out));
        h.result(r, report)
    })
}

/// Apply the patch file `patch` to `old` (a file or a directory), building the new version at
/// `out`, which must not exist; it appears only once every file and the bundle digest were
/// verified. Paths are UTF-8, NUL-terminated.
///
/// # Safety
/// `p` is a handle from [`bd_patcher_new`]; the paths are null or NUL-terminated strings;
/// `report` is null or points to a writable [`BdReport`].
#[no_mangle]
pub unsafe extern "C" fn bd_apply_files(
    p: *mut BdPatcher,
    old: *const c_char,
    patch: *const c_char,
    out: *const c_char,
    report: *mut BdReport,
) -> BdStatus {
    with(p, |h| {
        let path = |s: *const c_char| -> Option<&Path> {
            if s.is_null() {
                return None;
            }
            // SAFETY: per the contract above, a non-null `s` is NUL-terminated.
            unsafe { CStr::from_ptr(s) }.to_str().ok().map(Path::new)
        };
        let (Some(old), Some(patch), Some(out)) = (path(old), path(patch), path(out)) else {
            return h.fail(
                BdStatus::InvalidArgument,
                "a path is null or not UTF-8".into(),
            );
        };
        let r = h.patcher.apply(old, patch, out);
        h.result(r, report)
    })
}

/// The message of the last failure on `p` (empty after a success; "null handle" for a null
/// one). Valid until the next call on `p`; never null.
///
/// # Safety
/// `p` is null or a handle from [`bd_patcher_new`].
#[no_mangle]
pub unsafe extern "C" fn bd_last_error(p: *const BdPatcher) -> *const c_char {
    if p.is_null() {
        return c"null handle".as_ptr();
    }
    // SAFETY: per the contract above.
    unsafe { &*p }.error.as_ptr()
}

/// The library's version, e.g. "0.1.0 (format 2.6)". Static; never null.
#[no_mangle]
pub extern "C" fn bd_version() -> *const c_char {
    static V: std::sync::OnceLock<CString> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        CString::new(format!(
            "{} (format {}.{})",
            env!("CARGO_PKG_VERSION"),
            bundelta::format::VERSION_MAJOR,
            bundelta::format::VERSION_MINOR
        ))
        .expect("no NUL")
    })
    .as_ptr()
}
