//! Connection caps, in total and per client address, decided right after
//! accept and before any TLS work. A connection holds a [`ConnSlot`] for
//! its whole life; dropping it (however the connection ends) gives the
//! place back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Open and pending connections, in total and per source address.
#[derive(Debug, Default)]
pub struct ConnCounts {
    open: AtomicUsize,
    /// Handshakes in progress (the QUIC listener's Retry decision).
    pub pending: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place in [`ConnCounts`], given back when it ends.
#[derive(Debug)]
pub struct ConnSlot {
    counts: Arc<ConnCounts>,
    ip: IpAddr,
}

impl ConnCounts {
    /// Takes a place, unless a cap is reached; the error is the cap's name
    /// (a metric label).
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<ConnSlot, &'static str> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if self.open.load(Ordering::Relaxed) >= max_total {
            return Err("max_connections");
        }
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            return Err("max_connections_per_ip");
        }
        *n += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(ConnSlot {
            counts: self.clone(),
            ip,
        })
    }

    /// Connections holding a place.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.counts.open.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self.counts.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_slots_give_back() {
        let counts = Arc::new(ConnCounts::default());
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let s1 = counts.admit(a, 3, 2).unwrap();
        let _s2 = counts.admit(a, 3, 2).unwrap();
        assert_eq!(counts.admit(a, 3, 2).unwrap_err(), "max_connections_per_ip");
        let _s3 = counts.admit(b, 3, 2).unwrap();
        assert_eq!(counts.admit(b, 3, 2).unwrap_err(), "max_connections");
        drop(s1);
        assert_eq!(counts.open(), 2);
        assert!(counts.admit(a, 3, 2).is_ok());
    }
}
