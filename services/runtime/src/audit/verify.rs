//! Checking a trail: walk the entries from the anchor, in seq order, and report the first one
//! that breaks the chain.

use super::{AuditEntry, chain_hash, store::Head};

/// The `rpc` of the record a pruning appends (see [`super::AuditLog::prune`]).
pub const PRUNED: &str = "audit.pruned";

/// How the chain was broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// The record's content does not match its hash.
    Edited,
    /// A record holds another seq's content (two rows swapped, or a row moved).
    Reordered,
    /// Records are missing: a gap in the seqs, or fewer records than the head counts.
    Deleted,
    /// A record that the chain does not link: its `prev_hash` is not the hash before it, or
    /// its seq is past the head.
    Inserted,
}

impl FindingKind {
    /// The word `relay audit verify` prints.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Edited => "edited",
            Self::Reordered => "reordered",
            Self::Deleted => "deleted",
            Self::Inserted => "inserted",
        }
    }
}

/// The first break in a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The seq where the chain breaks.
    pub seq: i64,
    /// How.
    pub kind: FindingKind,
    /// What was seen, for the operator.
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seq {}: {} ({})",
            self.seq,
            self.kind.as_str(),
            self.detail
        )
    }
}

/// A chain that holds: how many records from which anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// The seq of the anchor the walk started from (0: the genesis).
    pub anchor_seq: i64,
    /// The last seq.
    pub last_seq: i64,
}

/// A walk along a chain, fed its entries in seq order (so a long trail is checked page by
/// page).
#[derive(Debug, Clone)]
pub struct Verifier {
    head: Head,
    expected_seq: i64,
    expected_prev: String,
    records: u64,
    /// Whether an `audit.pruned` record names the head's anchor (or there is none).
    anchor_named: bool,
}

impl Verifier {
    /// A walk of the chain `head` describes, from its anchor.
    #[must_use]
    pub fn new(head: Head) -> Self {
        Self {
            expected_seq: head.anchor_seq + 1,
            expected_prev: head.anchor_hash.clone(),
            anchor_named: head.anchor_seq == 0,
            head,
            records: 0,
        }
    }

    /// Checks the next entry.
    ///
    /// # Errors
    /// The first break, at this entry.
    pub fn feed(&mut self, entry: &AuditEntry) -> Result<(), Finding> {
        let finding = |kind, detail: String| Finding {
            seq: entry.seq,
            kind,
            detail,
        };
        if entry.seq > self.head.seq {
            return Err(finding(
                FindingKind::Inserted,
                format!("past the head, whose last seq is {}", self.head.seq),
            ));
        }
        if entry.seq < self.expected_seq {
            return Err(finding(
                FindingKind::Inserted,
                format!("at or before the anchor, seq {}", self.head.anchor_seq),
            ));
        }
        if entry.seq != self.expected_seq {
            return Err(Finding {
                seq: self.expected_seq,
                kind: FindingKind::Deleted,
                detail: format!(
                    "seqs {} to {} are missing",
                    self.expected_seq,
                    entry.seq - 1
                ),
            });
        }
        if entry.expected_hash() != entry.hash {
            let moved_from = (self.head.anchor_seq + 1..=self.head.seq)
                .filter(|seq| *seq != entry.seq)
                .find(|seq| chain_hash(&entry.prev_hash, *seq, &entry.record) == entry.hash);
            return Err(match moved_from {
                Some(from) => finding(
                    FindingKind::Reordered,
                    format!("holds the record of seq {from}"),
                ),
                None => finding(
                    FindingKind::Edited,
                    "its content does not match its hash".to_owned(),
                ),
            });
        }
        if entry.prev_hash != self.expected_prev {
            return Err(finding(
                FindingKind::Inserted,
                "its prev_hash is not the hash of the record before it".to_owned(),
            ));
        }
        if entry.record.rpc == PRUNED && entry.record.reason.starts_with(&self.anchor_reason()) {
            self.anchor_named = true;
        }
        self.expected_seq += 1;
        self.expected_prev.clone_from(&entry.hash);
        self.records += 1;
        Ok(())
    }

    /// How the `audit.pruned` record that set the anchor begins.
    fn anchor_reason(&self) -> String {
        format!(
            "anchor seq={} hash={} ",
            self.head.anchor_seq, self.head.anchor_hash
        )
    }

    /// The end of the walk: every record the head counts was seen, and the anchor was set by
    /// a pruning the chain itself records (a prefix deleted and the anchor moved by hand is
    /// not).
    ///
    /// # Errors
    /// When records at the end are missing, or the last hash is not the head's.
    pub fn finish(self) -> Result<Verified, Finding> {
        let last_seq = self.expected_seq - 1;
        if last_seq < self.head.seq {
            return Err(Finding {
                seq: self.expected_seq,
                kind: FindingKind::Deleted,
                detail: format!(
                    "seqs {} to {} are missing",
                    self.expected_seq, self.head.seq
                ),
            });
        }
        if !self.anchor_named {
            return Err(Finding {
                seq: self.head.anchor_seq,
                kind: FindingKind::Deleted,
                detail: format!(
                    "records up to seq {} are gone and no audit.pruned record names the anchor",
                    self.head.anchor_seq
                ),
            });
        }
        if self.expected_prev != self.head.hash {
            return Err(Finding {
                seq: last_seq,
                kind: FindingKind::Edited,
                detail: "the head's hash is not the last record's".to_owned(),
            });
        }
        Ok(Verified {
            records: self.records,
            anchor_seq: self.head.anchor_seq,
            last_seq,
        })
    }
}

/// Checks `entries` (in seq order) against `head`.
///
/// # Errors
/// The first break.
pub fn verify<'a>(
    head: Head,
    entries: impl IntoIterator<Item = &'a AuditEntry>,
) -> Result<Verified, Finding> {
    let mut walk = Verifier::new(head);
    for entry in entries {
        walk.feed(entry)?;
    }
    walk.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditRecord, store::genesis_head};

    fn chain(n: i64) -> (Head, Vec<AuditEntry>) {
        let mut head = genesis_head();
        let mut entries = Vec::new();
        for seq in 1..=n {
            let record = AuditRecord {
                time: seq,
                principal: format!("p{seq}"),
                ..AuditRecord::default()
            };
            let hash = chain_hash(&head.hash, seq, &record);
            entries.push(AuditEntry {
                seq,
                record,
                prev_hash: head.hash.clone(),
                hash: hash.clone(),
            });
            head.seq = seq;
            head.hash = hash;
        }
        (head, entries)
    }

    fn kind_at(head: &Head, entries: &[AuditEntry]) -> (i64, FindingKind) {
        let finding = verify(head.clone(), entries).expect_err("a break");
        (finding.seq, finding.kind)
    }

    #[test]
    fn a_whole_chain_verifies_and_each_kind_of_tampering_is_named_where_it_happened() {
        let (head, entries) = chain(5);
        let verified = verify(head.clone(), &entries).expect("valid");
        assert_eq!((verified.records, verified.last_seq), (5, 5));

        let mut edited = entries.clone();
        edited[2].record.principal = "someone else".into();
        assert_eq!(kind_at(&head, &edited), (3, FindingKind::Edited));

        let mut deleted = entries.clone();
        deleted.remove(1);
        assert_eq!(kind_at(&head, &deleted), (2, FindingKind::Deleted));
        assert_eq!(kind_at(&head, &entries[..4]), (5, FindingKind::Deleted));

        let mut swapped = entries.clone();
        let (two, four) = (swapped[1].clone(), swapped[3].clone());
        swapped[1] = AuditEntry { seq: 2, ..four };
        swapped[3] = AuditEntry { seq: 4, ..two };
        assert_eq!(kind_at(&head, &swapped), (2, FindingKind::Reordered));

        let mut inserted = entries.clone();
        let forged = AuditRecord::default();
        inserted.push(AuditEntry {
            seq: 6,
            hash: chain_hash(&head.hash, 6, &forged),
            prev_hash: head.hash.clone(),
            record: forged,
        });
        assert_eq!(kind_at(&head, &inserted), (6, FindingKind::Inserted));

        // A row rewritten with a hash that matches its new content breaks the link after it.
        let mut rehashed = entries.clone();
        rehashed[2].record.principal = "someone else".into();
        rehashed[2].hash = rehashed[2].expected_hash();
        assert_eq!(kind_at(&head, &rehashed), (4, FindingKind::Inserted));
    }

    #[test]
    fn a_pruned_chain_verifies_from_its_anchor_when_the_chain_says_so() {
        let (mut head, mut entries) = chain(5);
        head.anchor_seq = 2;
        head.anchor_hash = entries[1].hash.clone();
        // A prefix deleted and the anchor moved by hand: no record of the pruning.
        assert_eq!(kind_at(&head, &entries[2..]), (2, FindingKind::Deleted));
        // The pruning's own record, appended after the anchor moved.
        let record = AuditRecord {
            rpc: PRUNED.to_owned(),
            reason: format!("anchor seq=2 hash={} deleted=2", entries[1].hash),
            ..AuditRecord::default()
        };
        let hash = chain_hash(&head.hash, 6, &record);
        entries.push(AuditEntry {
            seq: 6,
            record,
            prev_hash: head.hash.clone(),
            hash: hash.clone(),
        });
        (head.seq, head.hash) = (6, hash);
        let verified = verify(head.clone(), &entries[2..]).expect("valid from the anchor");
        assert_eq!(verified.records, 4);
        head.anchor_hash = entries[0].hash.clone();
        assert_eq!(kind_at(&head, &entries[2..]), (3, FindingKind::Inserted));
    }
}
