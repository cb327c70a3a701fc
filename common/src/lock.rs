//! Taking a std lock whose holder panicked: the guard is taken anyway.
//!
//! A `Mutex` or `RwLock` is poisoned when a thread panics while holding it. Every
//! lock in Sluice guards a map, a counter or a slot that each critical section
//! leaves whole (no section does half of a multi-step update it relies on), so
//! the data stays usable, and one panicking session must not make every later
//! session on the node panic too. These methods say that once, instead of
//! `.lock().unwrap_or_else(|e| e.into_inner())` at every use.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex::lock`] that recovers the guard from a poisoned mutex.
pub trait MutexExt<T: ?Sized> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> MutexExt<T> for Mutex<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`RwLock::read`] and [`RwLock::write`] that recover the guard from a poisoned lock.
pub trait RwLockExt<T: ?Sized> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T>;
    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, thread};

    use super::*;

    /// Panics in another thread while holding the lock `hold` takes.
    fn poison<L: Send + Sync + 'static>(lock: &Arc<L>, hold: fn(&L)) {
        let lock = Arc::clone(lock);
        let joined = thread::spawn(move || hold(&lock)).join();
        assert!(joined.is_err(), "the holder panicked");
    }

    #[test]
    fn a_poisoned_mutex_still_hands_out_its_value() {
        let m = Arc::new(Mutex::new(vec![1]));
        poison(&m, |m| {
            let mut held = m.lock_unpoisoned();
            held.push(2);
            panic!("holder dies with {held:?}");
        });
        assert!(m.is_poisoned());
        assert!(m.lock().is_err(), "plain lock() reports the poison");
        m.lock_unpoisoned().push(3);
        assert_eq!(*m.lock_unpoisoned(), [1, 2, 3]);
    }

    #[test]
    fn a_poisoned_rwlock_still_reads_and_writes() {
        let l = Arc::new(RwLock::new(10));
        poison(&l, |l| {
            let mut held = l.write_unpoisoned();
            *held += 1;
            panic!("writer dies with {held}");
        });
        assert!(l.is_poisoned());
        assert!(l.read().is_err(), "plain read() reports the poison");
        *l.write_unpoisoned() *= 2;
        assert_eq!(*l.read_unpoisoned(), 22);
    }
}
