//! Model-based property tests of the ack tracker: random interleavings of the sink's calls (in stream order) and
//! librdkafka's acknowledgements (in any order), checked after every step against a model a few lines long.
//! `PROPTEST_CASES=20000 cargo test --lib progress::proptests` for a long run.

use proptest::prelude::*;

use super::*;

/// One source transaction (or idle position) as the sink sees it: `messages` records, then the commit at `end`.
#[derive(Debug, Clone)]
struct Tx {
    messages: u8,
    /// An idle position (keepalive outside a transaction), not a transaction.
    idle: bool,
    /// Bytes of WAL since the previous end (> 0: commit end LSNs strictly increase).
    gap: u16,
}

/// The model: transactions in stream order with their message counts; the flushed position is the end of the
/// longest prefix of committed transactions whose every message was acknowledged. (After a failed delivery the
/// position must not move at all; `run` checks that directly.)
#[derive(Default)]
struct Model {
    /// (end, committed, added, acked) per registered transaction.
    txs: Vec<(Lsn, bool, u32, u32)>,
    start: Lsn,
}

impl Model {
    fn flushed(&self) -> Lsn {
        let mut flushed = self.start;
        for &(end, committed, added, acked) in &self.txs {
            if !(committed && added == acked) {
                break;
            }
            flushed = end;
        }
        flushed
    }
}

fn tx() -> impl Strategy<Value = Tx> {
    (0u8..4, prop::bool::weighted(0.2), 1u16..500).prop_map(|(messages, idle, gap)| Tx {
        messages: if idle { 0 } else { messages },
        idle,
        gap,
    })
}

/// Runs the sink's script (begin, messages, commit per transaction, in order) interleaved with acknowledgements of
/// any produced message, both picked by `choices`; releases (gated) and one failure are mixed in when asked.
fn run(txs: &[Tx], choices: &[u16], gated: bool, fail_at: Option<u16>) -> Result<(), TestCaseError> {
    let start = Lsn(0x1000);
    let progress = if gated { Progress::gated(start) } else { Progress::new(start) };
    let rx = progress.subscribe();
    let mut model = Model { start, ..Model::default() };
    // The sink's script: (transaction index, step) with step 0 = begin, 1..=messages = a message, last = commit.
    let mut script: Vec<(usize, u8)> = Vec::new();
    for (i, t) in txs.iter().enumerate() {
        let steps = if t.idle { 1 } else { t.messages + 2 };
        script.extend((0..steps).map(|s| (i, s)));
    }
    let mut script = script.into_iter().peekable();
    let mut seqs: Vec<TxSeq> = Vec::new();
    // Produced, not yet acknowledged: the transaction index of each message.
    let mut unacked: Vec<usize> = Vec::new();
    let mut end = start;
    let mut released = start;
    let mut published = start;
    let mut frozen: Option<Lsn> = None;
    let mut choices = choices.iter().copied().chain(std::iter::repeat(0));
    let mut step = 0u16;
    loop {
        step += 1;
        let choice = choices.next().unwrap_or(0);
        let sink_turn = unacked.is_empty() || choice % 3 != 0;
        if sink_turn {
            let Some((i, s)) = script.next() else {
                if unacked.is_empty() {
                    break;
                }
                continue;
            };
            let t = &txs[i];
            if t.idle {
                end = Lsn(end.0 + u64::from(t.gap));
                progress.idle(end);
                seqs.push(TxSeq(u64::MAX));
                model.txs.push((end, true, 0, 0));
            } else if s == 0 {
                seqs.push(progress.begin());
                model.txs.push((Lsn::INVALID, false, 0, 0));
            } else if s <= t.messages {
                progress.add_message(seqs[i]);
                model.txs[i].2 += 1;
                unacked.push(i);
            } else {
                end = Lsn(end.0 + u64::from(t.gap));
                progress.commit(seqs[i], end);
                model.txs[i].0 = end;
                model.txs[i].1 = true;
            }
        } else {
            let i = unacked.swap_remove(usize::from(choice) % unacked.len());
            if fail_at == Some(step) && frozen.is_none() {
                frozen = Some(progress.flushed());
                progress.fail(seqs[i], "refused".into());
            } else {
                progress.ack(seqs[i]);
                model.txs[i].3 += 1;
            }
        }
        if gated && choice % 7 == 1 {
            // The Kafka transaction committed up to some position the sink has seen (never beyond its last commit).
            released = released.max(Lsn(start.0 + (end.0 - start.0) * u64::from(choice % 5) / 4));
            progress.release(released);
        }
        let now = progress.flushed();
        prop_assert_eq!(*rx.borrow(), now, "the watch and flushed() disagree");
        prop_assert!(now >= published, "the flushed position went back from {} to {}", published, now);
        published = now;
        // Never past a transaction with an unacknowledged message or without its commit.
        for &(e, committed, added, acked) in &model.txs {
            if !committed || added != acked {
                prop_assert!(e.is_invalid() || now < e, "flushed {} passes a transaction ending at {}", now, e);
                prop_assert!(now <= end, "flushed {} beyond every commit seen ({})", now, end);
                break;
            }
        }
        match frozen {
            Some(at) => prop_assert_eq!(now, at, "the flushed position moved after a failed delivery"),
            None => {
                let want = if gated { model.flushed().min(released) } else { model.flushed() };
                prop_assert_eq!(now, want.max(start), "step {}", step);
            }
        }
    }
    if frozen.is_none() && !gated {
        prop_assert_eq!(progress.flushed(), end, "everything acknowledged and committed, but not flushed");
    }
    Ok(())
}

proptest! {
    #[test]
    fn flushed_follows_the_model_for_any_ack_order(
        txs in prop::collection::vec(tx(), 0..12),
        choices in prop::collection::vec(any::<u16>(), 0..120),
    ) {
        run(&txs, &choices, false, None)?;
    }

    #[test]
    fn gated_flushed_is_the_model_capped_by_the_releases(
        txs in prop::collection::vec(tx(), 0..12),
        choices in prop::collection::vec(any::<u16>(), 0..120),
    ) {
        run(&txs, &choices, true, None)?;
    }

    #[test]
    fn a_failed_delivery_freezes_the_flushed_position(
        txs in prop::collection::vec(tx(), 1..12),
        choices in prop::collection::vec(any::<u16>(), 0..120),
        fail_at in 1u16..60,
    ) {
        run(&txs, &choices, false, Some(fail_at))?;
    }
}
