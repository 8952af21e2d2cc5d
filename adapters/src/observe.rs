//! A store's change listener: one function, set once (after the store's start-up load),
//! called after each change with what changed. The gate state feed listens this way, so
//! every write path — the APIs, imports, sweeps — reaches it.

use std::sync::OnceLock;

/// The listener of one store; nothing is called until one is set. It is called on the
/// writer's thread after the store's own locks are released (a caller may still hold
/// its own, such as the durable store's order lock): it must be quick and must not
/// write to the store.
pub struct Observer<T>(OnceLock<Box<dyn Fn(T) + Send + Sync>>);

impl<T> Default for Observer<T> {
    fn default() -> Self {
        Self(OnceLock::new())
    }
}

impl<T> Observer<T> {
    /// Sets the listener; false (and nothing changes) if one was set before.
    pub fn set(&self, listener: impl Fn(T) + Send + Sync + 'static) -> bool {
        self.0.set(Box::new(listener)).is_ok()
    }

    /// Tells the listener, if there is one, that `changed` changed.
    pub fn notify(&self, changed: T) {
        if let Some(listener) = self.0.get() {
            listener(changed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn calls_the_one_listener_set() {
        let observer = Observer::<u64>::default();
        observer.notify(1); // nobody listens yet
        let seen = Arc::new(AtomicU64::new(0));
        let sum = seen.clone();
        assert!(observer.set(move |n| {
            sum.fetch_add(n, Ordering::Relaxed);
        }));
        assert!(!observer.set(|_| {}));
        observer.notify(2);
        observer.notify(3);
        assert_eq!(seen.load(Ordering::Relaxed), 5);
    }
}
