//! A map for the few entries most pages have: a vector, scanned, until it
//! holds more than [`FEW`] entries, then a hash map.
//!
//! Why: the server keeps a page's members, slots and waiting visitors in
//! maps keyed by peer id, and nearly every page has one or two members —
//! an idle host is alone on its page. A `HashMap` takes 48 bytes empty and
//! allocates a table of four buckets for one entry (about a quarter of a
//! kilobyte for a member); this takes 24 bytes and allocates one entry.
//! The server holds several such maps per idle connection.

use std::collections::HashMap;
use std::collections::hash_map;
use std::hash::Hash;

/// Past this many entries, lookups hash instead of scanning.
const FEW: usize = 8;

#[derive(Debug, Clone)]
pub struct SmallMap<K, V> {
    repr: Repr<K, V>,
}

#[derive(Debug, Clone)]
enum Repr<K, V> {
    Few(Vec<(K, V)>),
    /// Boxed, so the map takes no more room than the vector when it is
    /// small: one allocation more, for the rare page with many members.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<K, V>>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        Self {
            repr: Repr::Few(Vec::new()),
        }
    }
}

/// A set on the same terms.
pub type SmallSet<K> = SmallMap<K, ()>;

impl<K: Eq + Hash, V> SmallMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Few(entries) => entries.len(),
            Repr::Many(map) => map.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        match &self.repr {
            Repr::Few(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            Repr::Many(map) => map.get(key),
        }
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        match &mut self.repr {
            Repr::Few(entries) => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            Repr::Many(map) => map.get_mut(key),
        }
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Inserts `value` under `key`; the value it replaces, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match &mut self.repr {
            Repr::Few(entries) => {
                if let Some((_, old)) = entries.iter_mut().find(|(k, _)| *k == key) {
                    return Some(std::mem::replace(old, value));
                }
                if entries.len() < FEW {
                    if entries.capacity() == 0 {
                        // Most sides never hold a second member.
                        entries.reserve_exact(1);
                    }
                    entries.push((key, value));
                    return None;
                }
                let mut map: HashMap<K, V> = std::mem::take(entries).into_iter().collect();
                map.insert(key, value);
                self.repr = Repr::Many(Box::new(map));
                None
            }
            Repr::Many(map) => map.insert(key, value),
        }
    }

    /// Removes `key`; its value, if it was there. A map that shrinks back
    /// to a few entries goes back to the vector, and an emptied one holds
    /// no memory.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        match &mut self.repr {
            Repr::Few(entries) => {
                let at = entries.iter().position(|(k, _)| k == key)?;
                let (_, value) = entries.swap_remove(at);
                self.shrunk();
                Some(value)
            }
            Repr::Many(map) => {
                let value = map.remove(key)?;
                self.shrunk();
                Some(value)
            }
        }
    }

    /// After entries went: a map down to a few goes back to the vector,
    /// and an emptied vector gives its memory back.
    fn shrunk(&mut self) {
        match &mut self.repr {
            Repr::Few(entries) if entries.is_empty() => *entries = Vec::new(),
            Repr::Few(_) => {}
            Repr::Many(map) if map.len() <= FEW / 2 => {
                let entries = std::mem::take(map.as_mut()).into_iter().collect();
                self.repr = Repr::Few(entries);
            }
            Repr::Many(_) => {}
        }
    }

    pub fn iter(&self) -> Iter<'_, K, V> {
        match &self.repr {
            Repr::Few(entries) => Iter::Few(entries.iter()),
            Repr::Many(map) => Iter::Many(map.iter()),
        }
    }

    pub fn iter_mut(&mut self) -> IterMut<'_, K, V> {
        match &mut self.repr {
            Repr::Few(entries) => IterMut::Few(entries.iter_mut()),
            Repr::Many(map) => IterMut::Many(map.iter_mut()),
        }
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.iter_mut().map(|(_, v)| v)
    }

    /// Keeps only the entries `keep` says to keep.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        match &mut self.repr {
            Repr::Few(entries) => entries.retain_mut(|(k, v)| keep(k, v)),
            Repr::Many(map) => map.retain(|k, v| keep(k, v)),
        }
        self.shrunk();
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Eq + Hash> SmallMap<K, ()> {
    /// Adds `key` to the set; whether it was new.
    pub fn add(&mut self, key: K) -> bool {
        self.insert(key, ()).is_none()
    }

    /// Takes `key` out of the set; whether it was there.
    pub fn take(&mut self, key: &K) -> bool {
        self.remove(key).is_some()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.contains_key(key)
    }
}

/// Equal when they hold the same entries, in whatever order.
impl<K: Eq + Hash, V: PartialEq> PartialEq for SmallMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<K: Eq + Hash, V: Eq> Eq for SmallMap<K, V> {}

pub enum Iter<'a, K, V> {
    Few(std::slice::Iter<'a, (K, V)>),
    Many(hash_map::Iter<'a, K, V>),
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Few(entries) => entries.next().map(|(k, v)| (k, v)),
            Iter::Many(map) => map.next(),
        }
    }
}

impl<'a, K: Eq + Hash, V> IntoIterator for &'a SmallMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

pub enum IterMut<'a, K, V> {
    Few(std::slice::IterMut<'a, (K, V)>),
    Many(hash_map::IterMut<'a, K, V>),
}

impl<'a, K, V> Iterator for IterMut<'a, K, V> {
    type Item = (&'a K, &'a mut V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            IterMut::Few(entries) => entries.next().map(|(k, v)| (&*k, v)),
            IterMut::Many(map) => map.next(),
        }
    }
}

impl<'a, K: Eq + Hash, V> IntoIterator for &'a mut SmallMap<K, V> {
    type Item = (&'a K, &'a mut V);
    type IntoIter = IterMut<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

impl<K: Eq + Hash, V> IntoIterator for SmallMap<K, V> {
    type Item = (K, V);
    type IntoIter = IntoIter<K, V>;

    fn into_iter(self) -> Self::IntoIter {
        match self.repr {
            Repr::Few(entries) => IntoIter::Few(entries.into_iter()),
            Repr::Many(map) => IntoIter::Many(map.into_iter()),
        }
    }
}

pub enum IntoIter<K, V> {
    Few(std::vec::IntoIter<(K, V)>),
    Many(hash_map::IntoIter<K, V>),
}

impl<K, V> Iterator for IntoIter<K, V> {
    type Item = (K, V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            IntoIter::Few(entries) => entries.next(),
            IntoIter::Many(map) => map.next(),
        }
    }
}

impl<K: Eq + Hash, V> Extend<(K, V)> for SmallMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, entries: I) {
        for (k, v) in entries {
            self.insert(k, v);
        }
    }
}

impl<K: Eq + Hash, V> FromIterator<(K, V)> for SmallMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let mut map = Self::new();
        map.extend(entries);
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map_across_the_switch_and_back() {
        let mut map = SmallMap::new();
        let mut reference = HashMap::new();
        // Grow past FEW, shrink below FEW / 2, grow again: every step
        // agrees with a HashMap.
        let steps = (0..20u32)
            .map(|k| (k, true))
            .chain((0..18).map(|k| (k, false)))
            .chain((0..12).map(|k| (k * 3, true)));
        for (i, (key, add)) in steps.enumerate() {
            if add {
                assert_eq!(map.insert(key, i), reference.insert(key, i));
            } else {
                assert_eq!(map.remove(&key), reference.remove(&key));
            }
            assert_eq!(map.len(), reference.len());
            for (k, v) in &reference {
                assert_eq!(map.get(k), Some(v));
            }
            let mut keys: Vec<_> = map.keys().copied().collect();
            keys.sort_unstable();
            let mut expected: Vec<_> = reference.keys().copied().collect();
            expected.sort_unstable();
            assert_eq!(keys, expected);
        }
        assert!(matches!(map.repr, Repr::Many(_)));
        for key in 0..40 {
            map.remove(&key);
        }
        assert!(map.is_empty());
        assert!(matches!(&map.repr, Repr::Few(entries) if entries.capacity() == 0));
    }

    #[test]
    fn retain_keeps_what_it_is_told_and_shrinks_back() {
        let mut map: SmallMap<u32, u32> = (0..30).map(|k| (k, k)).collect();
        map.retain(|k, v| {
            *v += 1;
            k % 10 == 0
        });
        let mut kept: Vec<_> = map.iter().map(|(k, v)| (*k, *v)).collect();
        kept.sort_unstable();
        assert_eq!(kept, vec![(0, 1), (10, 11), (20, 21)]);
        assert!(matches!(map.repr, Repr::Few(_)));
    }

    #[test]
    fn small_maps_are_smaller_than_hash_maps() {
        assert_eq!(std::mem::size_of::<SmallMap<[u8; 16], u64>>(), 24);
        assert!(std::mem::size_of::<HashMap<[u8; 16], u64>>() >= 48);
    }

    #[test]
    fn equality_ignores_order() {
        let a: SmallSet<u8> = [(1, ()), (2, ())].into_iter().collect();
        let b: SmallSet<u8> = [(2, ()), (1, ())].into_iter().collect();
        let c: SmallSet<u8> = [(2, ())].into_iter().collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
