//! Reads settings through the table: each value parsed by its [`Kind`], each bad
//! value recorded as one line naming its variable, and the default used in its place.

use std::{net::SocketAddr, time::Duration};

use super::{
    settings::{setting, Initial, Parsed},
    Cidr, SubscribeLimits,
};

pub(super) struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    /// Every problem found so far, one line each, in the order found.
    pub errors: Vec<String>,
}

impl<'a> Reader<'a> {
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Reader {
            lookup,
            errors: Vec::new(),
        }
    }

    /// The value set for `name`, trimmed; blank counts as unset.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// Checks `value` as the table says `name` must be, recording an error if not.
    pub fn check(&mut self, name: &str, value: &str) -> Option<Parsed> {
        let s = setting(name);
        match s.kind.parse(value) {
            Ok(p) => Some(p),
            Err(e) => {
                self.errors.push(match s.kind.shown(value) {
                    Some(shown) => format!("{name}={shown:?}: {e}"),
                    None => format!("{name}: {e}"),
                });
                None
            }
        }
    }

    /// The value of `name`: the one set if it is good, else its default (`None`
    /// when it has none).
    fn value(&mut self, name: &str) -> Option<Parsed> {
        if let Some(v) = self.get(name) {
            if let Some(p) = self.check(name, &v) {
                return Some(p);
            }
        }
        match setting(name).default {
            // The table's defaults all parse (a unit test checks each).
            Initial::Value(d) => setting(name).kind.parse(d).ok(),
            Initial::Unset(_) => None,
        }
    }

    pub fn int(&mut self, name: &str) -> usize {
        match self.value(name) {
            Some(Parsed::Int(n)) => n,
            other => unreachable!("{name} read as a number but is {other:?}"),
        }
    }

    pub fn secs(&mut self, name: &str) -> Duration {
        Duration::from_secs(self.int(name) as u64)
    }

    pub fn millis(&mut self, name: &str) -> Duration {
        Duration::from_millis(self.int(name) as u64)
    }

    /// `u32` settings have ranges within `u32` (a unit test checks each).
    pub fn int32(&mut self, name: &str) -> u32 {
        u32::try_from(self.int(name)).unwrap_or(u32::MAX)
    }

    /// The chosen word, or `None` when unset and without a default.
    pub fn word(&mut self, name: &str) -> Option<&'static str> {
        match self.value(name) {
            Some(Parsed::Word(w)) => Some(w),
            None => None,
            other => unreachable!("{name} read as a word but is {other:?}"),
        }
    }

    pub fn addr(&mut self, name: &str) -> SocketAddr {
        match self.value(name) {
            Some(Parsed::Addr(a)) => a,
            other => unreachable!("{name} read as an address but is {other:?}"),
        }
    }

    pub fn text(&mut self, name: &str) -> Option<String> {
        match self.value(name) {
            Some(Parsed::Text(t)) => Some(t),
            None => None,
            other => unreachable!("{name} read as text but is {other:?}"),
        }
    }

    pub fn list(&mut self, name: &str) -> Option<Vec<String>> {
        match self.value(name) {
            Some(Parsed::List(l)) => Some(l),
            None => None,
            other => unreachable!("{name} read as a list but is {other:?}"),
        }
    }

    pub fn cidrs(&mut self, name: &str) -> Vec<Cidr> {
        match self.value(name) {
            Some(Parsed::Cidrs(c)) => c,
            None => Vec::new(),
            other => unreachable!("{name} read as CIDRs but is {other:?}"),
        }
    }

    pub fn limits(&mut self, name: &str) -> SubscribeLimits {
        match self.value(name) {
            Some(Parsed::Limits(l)) => l,
            other => unreachable!("{name} read as subscribe limits but is {other:?}"),
        }
    }
}
