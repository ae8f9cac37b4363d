//! The triage protocol file parser (`relay_intake::protocol::Protocol::parse`), then triage
//! with what it accepted: parsing never panics, and an accepted protocol decides every
//! incident type and flag set with a disposition and the reasons for it.

use relay_intake::protocol::Protocol;
use relay_proto::intake::{Disposition, RiskFlag};

const FLAGS: [RiskFlag; 5] = [
    RiskFlag::Weapons,
    RiskFlag::Violence,
    RiskFlag::MedicalEmergency,
    RiskFlag::SuicideRiskWithMeans,
    RiskFlag::DangerToOthers,
];

/// Runs the target on one input, as libFuzzer would (see the module documentation).
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(protocol) = Protocol::parse(text, "fuzz") else {
        return;
    };
    // Every type the protocol names, one it does not, and a code of no CAD.
    let mut types: Vec<String> = protocol
        .type_rules
        .iter()
        .flat_map(|r| r.types.iter().cloned())
        .collect();
    types.extend(["ZZZZ".to_owned(), "not a code".to_owned()]);
    for (i, incident_type) in types.iter().enumerate() {
        let flags: Vec<RiskFlag> = FLAGS
            .iter()
            .enumerate()
            .filter(|(bit, _)| (i >> bit) & 1 == 1)
            .map(|(_, f)| *f)
            .collect();
        let decision = protocol.triage("fuzz-cad", incident_type, &flags, Disposition::Unspecified);
        assert_ne!(decision.disposition, Disposition::Unspecified);
        assert!(!decision.reasons.is_empty(), "a decision without a reason");
        assert_eq!(decision.reasons.len(), decision.rule_ids.len());
        // A dispatcher may always send police.
        assert!(
            protocol
                .check_override(
                    decision.disposition,
                    &flags,
                    Disposition::TraditionalResponse
                )
                .is_ok()
        );
        // Flags still win over an override.
        let overridden = protocol.triage(
            "fuzz-cad",
            incident_type,
            &flags,
            Disposition::CommunityResponse,
        );
        if decision.disposition == Disposition::TraditionalResponse && !flags.is_empty() {
            let flagged = protocol.triage(
                "fuzz-cad",
                "not a code",
                &flags,
                Disposition::CommunityResponse,
            );
            assert_ne!(flagged.disposition, Disposition::Unspecified);
        }
        assert_ne!(overridden.disposition, Disposition::Unspecified);
    }
}
