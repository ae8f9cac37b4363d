//! The referral rules, decided here and persisted by the store: who may be referred where,
//! which referrals are open, and how a referral's status may change.

use relay_proto::directory::{Referral, ReferralStatus, ServiceStatus};

use crate::{error::DirectoryError, micros_to_timestamp};

/// Whether a referral status is final: the referral's outcome is known and it never changes
/// again.
#[must_use]
pub fn is_final(status: ReferralStatus) -> bool {
    matches!(
        status,
        ReferralStatus::Connected | ReferralStatus::Declined | ReferralStatus::Cancelled
    )
}

/// Whether a referral in `status` (a stored value) is open: made, and a later attempt may
/// still connect the person (PENDING, UNREACHABLE, NO_CAPACITY). One incident has at most one
/// open referral to one service at one location.
#[must_use]
pub fn is_open(status: i64) -> bool {
    i32::try_from(status)
        .ok()
        .and_then(|status| ReferralStatus::try_from(status).ok())
        .is_some_and(|status| status != ReferralStatus::Unspecified && !is_final(status))
}

/// What the store read before creating a referral.
#[derive(Debug, Clone, Default)]
pub struct CreateFacts {
    /// The status of the referral's service; `None` when there is no such service.
    pub service_status: Option<i64>,
    /// Whether the service is offered at the referral's location (true without a location).
    pub offered_at_location: bool,
    /// The stored referrals of the same incident to the same service and location:
    /// (referral_id, status).
    pub referrals: Vec<(String, i64)>,
}

/// The referral to store for `referral` (PENDING, created and updated at `now`), or why it
/// may not be made: the service must exist, be offered at the location named, be ACTIVE,
/// and the incident must not have an open referral to it there already.
///
/// # Errors
/// [`DirectoryError::ServiceNotFound`], [`DirectoryError::LocationNotFound`],
/// [`DirectoryError::ServiceNotActive`] or [`DirectoryError::ReferralExists`], checked in
/// that order.
pub fn plan_create(
    referral: &Referral,
    facts: &CreateFacts,
    now: i64,
) -> Result<Referral, DirectoryError> {
    let Some(status) = facts.service_status else {
        return Err(DirectoryError::ServiceNotFound(referral.service_id.clone()));
    };
    if !facts.offered_at_location {
        return Err(DirectoryError::LocationNotFound {
            service_id: referral.service_id.clone(),
            location_id: referral.location_id.clone(),
        });
    }
    if status != i64::from(ServiceStatus::Active as i32) {
        return Err(DirectoryError::ServiceNotActive(
            referral.service_id.clone(),
        ));
    }
    if let Some((open, _)) = facts.referrals.iter().find(|(_, status)| is_open(*status)) {
        return Err(DirectoryError::ReferralExists(open.clone()));
    }
    let mut stored = referral.clone();
    stored.status = ReferralStatus::Pending as i32;
    stored.create_time = Some(micros_to_timestamp(now));
    stored.update_time = Some(micros_to_timestamp(now));
    Ok(stored)
}

/// The referral after applying `status` and `notes` to `current`, or why it may not change.
///
/// # Errors
/// [`DirectoryError::ReferralClosed`] or [`DirectoryError::BackToPending`].
pub fn transition(
    current: &Referral,
    status: ReferralStatus,
    notes: Option<&str>,
    now: i64,
) -> Result<Referral, DirectoryError> {
    let from = ReferralStatus::try_from(current.status).unwrap_or(ReferralStatus::Pending);
    let mut next = current.clone();
    if status != ReferralStatus::Unspecified && status != from {
        if is_final(from) {
            return Err(DirectoryError::ReferralClosed(current.referral_id.clone()));
        }
        if status == ReferralStatus::Pending {
            return Err(DirectoryError::BackToPending(current.referral_id.clone()));
        }
        next.status = status as i32;
    }
    if let Some(notes) = notes {
        next.notes = notes.to_owned();
    }
    if next != *current {
        next.update_time = Some(micros_to_timestamp(now));
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(
        service_status: Option<ServiceStatus>,
        offered: bool,
        referrals: &[(&str, ReferralStatus)],
    ) -> CreateFacts {
        CreateFacts {
            service_status: service_status.map(|s| i64::from(s as i32)),
            offered_at_location: offered,
            referrals: referrals
                .iter()
                .map(|(id, status)| ((*id).to_owned(), i64::from(*status as i32)))
                .collect(),
        }
    }

    /// The open statuses are the ones the unique index `referrals_one_open` covers
    /// (migration 0001): PENDING 1, UNREACHABLE 4, NO_CAPACITY 5.
    #[test]
    fn open_statuses_match_the_unique_index() {
        let open: Vec<i64> = (0..8).filter(|s| is_open(*s)).collect();
        assert_eq!(open, vec![1, 4, 5]);
    }

    #[test]
    fn a_referral_is_checked_in_order() {
        let referral = Referral {
            referral_id: "r".into(),
            service_id: "s".into(),
            location_id: "l".into(),
            notes: "n".into(),
            ..Referral::default()
        };
        let error = |f: &CreateFacts| plan_create(&referral, f, 7).expect_err("refused");
        assert!(matches!(
            error(&facts(None, false, &[])),
            DirectoryError::ServiceNotFound(_)
        ));
        let inactive = Some(ServiceStatus::Inactive);
        assert!(matches!(
            error(&facts(inactive, false, &[])),
            DirectoryError::LocationNotFound { .. }
        ));
        assert!(matches!(
            error(&facts(inactive, true, &[])),
            DirectoryError::ServiceNotActive(_)
        ));
        let active = Some(ServiceStatus::Active);
        let taken = [
            ("a", ReferralStatus::Connected),
            ("b", ReferralStatus::Unreachable),
        ];
        assert!(
            matches!(error(&facts(active, true, &taken)), DirectoryError::ReferralExists(id) if id == "b")
        );
        let closed = [("a", ReferralStatus::Declined)];
        let stored = plan_create(&referral, &facts(active, true, &closed), 7).expect("made");
        assert_eq!(stored.status, ReferralStatus::Pending as i32);
        assert_eq!(stored.create_time, Some(micros_to_timestamp(7)));
        assert_eq!(stored.update_time, stored.create_time);
        assert_eq!(stored.notes, "n");
    }
}
