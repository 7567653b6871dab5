//! The rayon pool every kernel runs on.
//!
//! quantdrift uses rayon's global pool so that it shares threads with any
//! other rayon user in the process. `QUANTDRIFT_NUM_THREADS` sizes it; it is
//! read once, the first time a kernel asks for the pool.

use std::sync::Once;

static INIT: Once = Once::new();

/// The most threads `QUANTDRIFT_NUM_THREADS` may ask for, as a multiple of
/// the cores this process may use: past a few threads per core the kernels
/// only lose time to switching, and a stray large value (a million) would
/// spend minutes spawning threads before the first result.
pub const MAX_THREADS_PER_CORE: usize = 8;

/// The pool size `QUANTDRIFT_NUM_THREADS=value` asks for: a positive integer,
/// capped at [`MAX_THREADS_PER_CORE`] per core; None for anything else (the
/// pool then takes every core).
pub fn requested_threads(value: &str) -> Option<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .map(|n| n.min(cores * MAX_THREADS_PER_CORE))
}

/// Builds the global pool from `QUANTDRIFT_NUM_THREADS` if it is set and the
/// pool has not been built yet. Safe to call from every entry point.
pub fn init_pool() {
    INIT.call_once(|| {
        if let Some(n) = std::env::var("QUANTDRIFT_NUM_THREADS")
            .ok()
            .and_then(|s| requested_threads(&s))
        {
            // An error here means another library built the global pool
            // first; its size then wins, which is the only sane outcome.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global();
        }
    });
}

/// The number of threads kernels run on.
pub fn num_threads() -> usize {
    init_pool();
    rayon::current_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_threads_are_positive_and_capped() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(requested_threads("1"), Some(1));
        assert_eq!(
            requested_threads(" 2\n"),
            Some(2.min(cores * MAX_THREADS_PER_CORE))
        );
        assert_eq!(
            requested_threads("999999"),
            Some(cores * MAX_THREADS_PER_CORE)
        );
        for bad in ["", "0", "-1", "abc", "1.5"] {
            assert_eq!(requested_threads(bad), None, "{bad:?}");
        }
    }
}
