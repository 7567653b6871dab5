//! The rayon pool every kernel runs on.
//!
//! quantdrift uses rayon's global pool so that it shares threads with any
//! other rayon user in the process. `QUANTDRIFT_NUM_THREADS` sizes it; it is
//! read once, the first time a kernel asks for the pool.

use std::sync::Once;

static INIT: Once = Once::new();

/// Builds the global pool from `QUANTDRIFT_NUM_THREADS` if it is set and the
/// pool has not been built yet. Safe to call from every entry point.
pub fn init_pool() {
    INIT.call_once(|| {
        if let Some(n) = std::env::var("QUANTDRIFT_NUM_THREADS")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
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
