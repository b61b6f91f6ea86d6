//! Run one child process and measure it: wall time, CPU time and peak RSS from the rusage
//! that `wait4` returns when it reaps the child, with a per-child timeout.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// What one child run cost.
#[derive(Clone, Debug)]
pub struct Measured {
    /// Exited with status 0 within the timeout.
    pub ok: bool,
    /// "exit 0", "exit 3", "killed by signal 9", "timed out after 60 s".
    pub status: String,
    pub wall_s: f64,
    /// User + system CPU seconds of the child and the descendants it reaped.
    pub cpu_s: f64,
    /// Peak resident set size in KiB (`ru_maxrss`: the largest of the child and its reaped
    /// descendants).
    pub maxrss_kib: u64,
    /// The last lines of the child's stdout and stderr (both go to one log file).
    pub log_tail: String,
}

fn tv_secs(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// The most this process held (RSS, KiB) when it started a child: the floor under every
/// child's ru_maxrss (see `run`).
static FLOOR_KIB: AtomicU64 = AtomicU64::new(0);

/// The largest RSS this process had when it started a child, in KiB.
pub fn rss_floor_kib() -> u64 {
    FLOOR_KIB.load(Ordering::SeqCst)
}

/// Set by SIGINT/SIGTERM once `catch_interrupts` ran.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The child being measured (0: none), for the signal handler to stop it.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; the child is not reaped while CHILD holds it.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// On SIGINT or SIGTERM, kill the running child and let the caller see `interrupted()`, so
/// that it can remove its work files instead of dying with them left behind.
pub fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches atomics and calls kill (async-signal-safe).
        unsafe {
            libc::signal(
                sig,
                on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

/// Whether SIGINT or SIGTERM arrived since `catch_interrupts`.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Runs `cmd` with stdin from /dev/null and stdout+stderr into `log`; SIGKILL after `timeout`.
/// The child stays in our process group, so a Ctrl-C on the terminal stops it too.
pub fn run(cmd: &[OsString], log: &Path, timeout: Duration) -> Result<Measured> {
    let (prog, args) = cmd.split_first().context("empty command")?;
    let out = File::create(log).with_context(|| format!("{}: cannot create", log.display()))?;
    let err = out.try_clone()?;
    let mut command = Command::new(prog);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // The kernel starts the child's ru_maxrss at this process's peak RSS (the high-water mark
    // of the address space it is spawned from carries over exec). Reset our peak to our
    // current RSS first (Linux >= 4.0), so that the floor is what we hold now.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    FLOOR_KIB.fetch_max(self_maxrss_kib(), Ordering::SeqCst);
    let t0 = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", prog.to_string_lossy()))?;
    let pid = child.id() as libc::pid_t;
    // From here on the child is reaped with wait4, never through `child`.
    drop(child);
    CHILD.store(pid, Ordering::SeqCst);
    if interrupted() {
        on_interrupt(0);
    }

    let timed_out = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = mpsc::channel::<()>();
    let watcher = {
        let timed_out = timed_out.clone();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(timeout) {
                timed_out.store(true, Ordering::SeqCst);
                // SAFETY: plain syscall. The child is not reaped before this thread is joined
                // (see below), so its pid cannot have been reused.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        })
    };

    // Wait for the exit without reaping (WNOWAIT): the zombie keeps its pid, so the watcher
    // can never signal an unrelated process. Then stop the watcher and reap.
    loop {
        // SAFETY: siginfo_t is plain data; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a siginfo_t owned by this frame.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("waitid");
        }
    }
    let wall_s = t0.elapsed().as_secs_f64();
    CHILD.store(0, Ordering::SeqCst);
    drop(stop);
    let _ = watcher.join();

    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals; pid is our unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("wait4");
        }
    }
    let timed_out = timed_out.load(Ordering::SeqCst);
    let (ok, status) = if timed_out {
        (false, format!("timed out after {} s", timeout.as_secs()))
    } else if libc::WIFEXITED(status) {
        let code = libc::WEXITSTATUS(status);
        (code == 0, format!("exit {code}"))
    } else if libc::WIFSIGNALED(status) {
        (
            false,
            format!("killed by signal {}", libc::WTERMSIG(status)),
        )
    } else {
        (false, format!("wait status {status}"))
    };
    Ok(Measured {
        ok,
        status,
        wall_s,
        cpu_s: tv_secs(ru.ru_utime) + tv_secs(ru.ru_stime),
        maxrss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
        log_tail: tail(log, 600),
    })
}

/// The last `max` bytes of a log, trimmed, as text.
fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().replace('\n', " | ")
}

/// Peak RSS of this process (since the last reset of /proc/self/clear_refs), in KiB.
fn self_maxrss_kib() -> u64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a local.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    u64::try_from(ru.ru_maxrss).unwrap_or(0)
}

/// The median of `v` (the mean of the two middle values for an even count); 0 if empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn measures_exit_codes_cpu_and_rss() {
        let dir = std::env::temp_dir().join(format!("bundelta-measure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let m = run(
            &os(&["sh", "-c", "echo hi; exit 3"]),
            &log,
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(!m.ok);
        assert_eq!(m.status, "exit 3");
        assert_eq!(m.log_tail, "hi");
        // A child that touches 64 MiB: its peak RSS must show it, and it burns CPU.
        let m = run(
            &os(&[
                "sh",
                "-c",
                "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; x=0; while [ $x -lt 20000 ]; do x=$((x+1)); done",
            ]),
            &log,
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(m.ok, "{m:?}");
        assert!(m.maxrss_kib >= 60 * 1024, "{m:?}");
        assert!(m.cpu_s > 0.0 && m.wall_s > 0.0, "{m:?}");
        let m = run(&os(&["sleep", "30"]), &log, Duration::from_millis(300)).unwrap();
        assert!(!m.ok);
        assert!(m.status.starts_with("timed out"), "{m:?}");
        assert!(m.wall_s < 10.0, "{m:?}");
        assert!(run(&os(&["/nonexistent/tool"]), &log, Duration::from_secs(5)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}

#[cfg(test)]
mod floor {
    #[test]
    fn child_rss_does_not_inherit_our_past_peak() {
        let log = std::env::temp_dir().join(format!("bundelta-floor-{}", std::process::id()));
        let v = vec![1u8; 200 << 20];
        std::hint::black_box(&v);
        drop(v);
        let m = super::run(&["true".into()], &log, std::time::Duration::from_secs(5)).unwrap();
        let _ = std::fs::remove_file(&log);
        assert!(m.ok);
        // Without the reset, `true` would show this process's 200 MiB peak.
        assert!(m.maxrss_kib < 100 << 10, "{m:?}");
    }
}
