//! glibc's heap settings for the long-running commands.
//!
//! A training step allocates and frees hundreds of tensors of a few MiB to a few hundred. glibc
//! returns freed memory at the top of its heap to the kernel as soon as more than a dynamic
//! threshold (64 MiB at most) is free there, and the kernel clears every page handed back out:
//! on the 40M bench run a sixth of the process's time went to clearing pages and page faults
//! (`scripts/profile_step.sh`). With the mmap threshold fixed at 32 MiB (blocks up to it come
//! from the heap; larger ones are mapped and unmapped as before) and no trimming of the heap's
//! top, the freed blocks are reused instead: 40M steps 3.05 -> 2.65 s with the same peak RSS,
//! 0.5B peak RSS unchanged (`scripts/bench-vs-trl.sh`). glibc reads its tunables when a process
//! starts, so `kto train`, `kto logps` and `kto generate` re-execute themselves once with them.

/// Present in the re-executed process (or set by the caller to keep glibc's defaults).
pub const MARK: &str = "KTO_HEAP_SETTINGS";

/// glibc's tunables: blocks up to 32 MiB from the heap, the heap's top never trimmed, and the
/// heap grown 256 MiB at a time.
pub const TUNABLES: &str =
    "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1099511627776:glibc.malloc.top_pad=268435456";

/// Whether the process should re-execute itself with [`TUNABLES`]: not when it already did
/// ([`MARK`] set, whatever its value, which is also how a caller opts out), nor when the caller
/// chose glibc's settings (`GLIBC_TUNABLES` or a `MALLOC_*` variable).
pub fn wanted<K: AsRef<std::ffi::OsStr>>(keys: impl IntoIterator<Item = K>) -> bool {
    !keys.into_iter().any(|key| {
        let key = key.as_ref().to_string_lossy();
        key == MARK || key == "GLIBC_TUNABLES" || key.starts_with("MALLOC_")
    })
}

/// Re-executes this binary with [`TUNABLES`] when [`wanted`]. Returns only when it did not
/// (also when `exec` failed: the command then runs with glibc's defaults).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if !wanted(std::env::vars_os().map(|(key, _)| key)) {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
        let error = std::process::Command::new(&exe)
            .arg0(arg0)
            .args(args)
            .env(MARK, "1")
            .env("GLIBC_TUNABLES", TUNABLES)
            .exec();
        eprintln!("note: running with glibc's default heap settings (re-executing {} failed: {error})", exe.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re_executes_once_and_never_over_the_callers_settings() {
        assert!(wanted(["PATH", "HOME", "RAYON_NUM_THREADS"]));
        assert!(!wanted(["PATH", MARK]), "the re-executed process");
        assert!(!wanted(["GLIBC_TUNABLES"]), "the caller's tunables");
        assert!(!wanted(["MALLOC_ARENA_MAX"]), "the caller's malloc variables");
    }
}
