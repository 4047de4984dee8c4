//! Giving freed heap memory back to the kernel.
//!
//! glibc's malloc keeps what a program frees for its next allocations: after a worker's
//! 100k connections leave, their small allocations stay resident in the heap's free
//! lists. `malloc_trim(0)` releases every whole free page (top of the heap and, since
//! glibc 2.8, free pages inside it) with `madvise`. It walks the heap, so it is called
//! rarely (see `worker::trim`).

/// Returns free heap pages to the kernel; true when some memory was released.
pub fn trim() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim takes no pointers and only touches malloc's own state,
        // which it locks; it is safe to call at any time from any thread.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}
