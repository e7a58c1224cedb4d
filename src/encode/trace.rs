//! W3C Trace Context for business events (CloudEvents distributed-tracing extension): a `traceparent` derived
//! deterministically from the event's correlation id and event id, so every event of one source transaction is in
//! one trace, a replay gives the same value, and a consumer's spans join the chain.
//!
//! `traceparent` = `00-<trace-id>-<parent-id>-01`: trace-id = the correlation id's 32 hex digits when it is a UUID
//! (the default correlation id is one), else the first 16 bytes of SHA-256 of its text; parent-id = the first 8
//! bytes of SHA-256 of the event id; flags `01` (sampled). An all-zero id (invalid in W3C) gets its last bit set.

use sha2::{Digest, Sha256};

/// The `traceparent` of the event `event_id` correlated by `correlation_id` (shared: the header and, in structured
/// CloudEvents, the envelope both hold it).
pub fn traceparent(correlation_id: &str, event_id: &str) -> std::sync::Arc<str> {
    // Consecutive events share their correlation id (one per source transaction by default): its trace id is
    // derived once per run of equal ids, not per event.
    thread_local! {
        static LAST: std::cell::RefCell<Option<(String, [u8; 16])>> = const { std::cell::RefCell::new(None) };
    }
    let trace = LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((id, trace)) if id == correlation_id => *trace,
            _ => {
                let trace = trace_id(correlation_id);
                *last = Some((correlation_id.to_string(), trace));
                trace
            }
        }
    });
    let mut parent = [0u8; 8];
    parent.copy_from_slice(&Sha256::digest(event_id.as_bytes())[..8]);
    if parent.iter().all(|&b| b == 0) {
        parent[7] = 1;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Written on the stack, then one allocation for the shared text.
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    for (i, b) in trace.iter().chain(&parent).enumerate() {
        let at = if i < 16 { 3 + 2 * i } else { 4 + 2 * i };
        out[at] = HEX[usize::from(b >> 4)];
        out[at + 1] = HEX[usize::from(b & 0xf)];
    }
    std::str::from_utf8(&out).map(std::sync::Arc::from).unwrap_or_else(|_| std::sync::Arc::from(""))
}

/// The trace id of `correlation_id`: its 16 bytes when it is a UUID, else the first 16 bytes of its SHA-256; never
/// all zero.
fn trace_id(correlation_id: &str) -> [u8; 16] {
    let mut trace = match uuid::Uuid::parse_str(correlation_id) {
        Ok(u) if !u.is_nil() => *u.as_bytes(),
        _ => {
            let mut t = [0u8; 16];
            t.copy_from_slice(&Sha256::digest(correlation_id.as_bytes())[..16]);
            t
        }
    };
    if trace.iter().all(|&b| b == 0) {
        trace[15] = 1;
    }
    trace
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_w3c_and_deterministic() {
        let t = traceparent("9a1e2b3c-4d5e-5f60-8a7b-9c0d1e2f3a4b", "5f0c0000-0000-5000-8000-000000000001");
        assert_eq!(t.len(), 55);
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[0], parts[1], parts[3]), ("00", "9a1e2b3c4d5e5f608a7b9c0d1e2f3a4b", "01"));
        assert_eq!(parts[2].len(), 16);
        assert!(parts[2].bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(t, traceparent("9a1e2b3c-4d5e-5f60-8a7b-9c0d1e2f3a4b", "5f0c0000-0000-5000-8000-000000000001"));
        let other = traceparent("9a1e2b3c-4d5e-5f60-8a7b-9c0d1e2f3a4b", "another event");
        assert_eq!(other[..36], t[..36], "one trace per correlation id");
        assert_ne!(other, t, "one parent span per event");
        // A correlation expression that is no UUID: hashed, still 32 hex digits, never all zero.
        let custom = traceparent("order-42", "e");
        assert_eq!(custom.len(), 55);
        assert_ne!(&custom[3..35], "00000000000000000000000000000000");
        assert_ne!(traceparent("00000000-0000-0000-0000-000000000000", "e")[3..35], *"0".repeat(32));
        // The trace id remembered for the last correlation id is never another id's.
        assert_eq!(traceparent("9a1e2b3c-4d5e-5f60-8a7b-9c0d1e2f3a4b", "5f0c0000-0000-5000-8000-000000000001"), t);
        assert_eq!(traceparent("order-42", "e"), custom);
    }
}
