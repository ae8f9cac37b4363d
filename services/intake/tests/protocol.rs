//! The triage protocol: a table covering every rule of the default protocol, the "flags win"
//! guarantee checked exhaustively, and bad files refused with the line and the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;

use relay_intake::protocol::{Protocol, ProtocolError};
use relay_proto::intake::{Disposition, RiskFlag};

use Disposition::{
    CoResponse as Co, CommunityResponse as Community, NeedsReview as Review,
    TraditionalResponse as Traditional,
};

fn protocol() -> Protocol {
    Protocol::default_protocol().expect("the shipped protocol is valid")
}

/// (case, cad_system, incident_type, flags, expected disposition, expected rule ids,
/// expected co-responders, expected required capabilities)
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static [RiskFlag],
    Disposition,
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);

#[rustfmt::skip]
const TABLE: &[Row] = &[
    // Type rules.
    ("welfare", "cad", "WELFARE", &[], Community, &["welfare-check"], &[], &[]),
    ("mental health", "cad", "EDP", &[], Community, &["mental-health"], &[], &[]),
    ("suicidal ideation", "cad", "SUICTHRT", &[], Community, &["suicidal-ideation"], &[], &["clinician"]),
    ("intoxication", "cad", "INTOX", &[], Community, &["intoxication"], &[], &[]),
    ("trespass", "cad", "TRESPASS", &[], Community, &["trespass"], &[], &[]),
    ("needs assistance", "cad", "ASSIST", &[], Community, &["needs-assistance"], &[], &[]),
    ("citizen assist", "cad", "CITASST", &[], Community, &["needs-assistance"], &[], &[]),
    ("non-emergent medical", "cad", "SICK", &[], Community, &["non-emergent-medical"], &[], &["medic"]),
    ("disturbance", "cad", "DISORD", &[], Co, &["disturbance"], &["police"], &[]),
    ("noise", "cad", "NOISE", &[], Co, &["disturbance"], &["police"], &[]),
    ("assault", "cad", "ASSAULT", &[], Traditional, &["violent-crime"], &["police"], &[]),
    ("weapon call", "cad", "WEAPON", &[], Traditional, &["violent-crime"], &["police"], &[]),
    ("overdose call", "cad", "OD", &[], Traditional, &["medical-emergency-types"], &["ems"], &[]),
    ("suicide attempt", "cad", "SUICIDE", &[], Traditional, &["medical-emergency-types"], &["ems"], &[]),
    // Defaults.
    ("unlisted APCO code", "cad", "BURGLARY", &[], Traditional, &["unlisted_type"], &["police"], &[]),
    ("unknown code", "cad", "ZZZ-LOCAL", &[], Review, &["unknown_type"], &[], &[]),
    ("mapped CAD code", "example-cad", "MH", &[], Community, &["mental-health"], &[], &[]),
    ("mapping is per CAD", "other-cad", "MH", &[], Review, &["unknown_type"], &[], &[]),
    // Flag rules, each on a community-eligible call.
    ("weapons", "cad", "WELFARE", &[RiskFlag::Weapons], Traditional, &["welfare-check", "flag-weapons"], &["police"], &[]),
    ("violence", "cad", "WELFARE", &[RiskFlag::Violence], Traditional, &["welfare-check", "flag-violence"], &["police"], &[]),
    ("medical emergency", "cad", "WELFARE", &[RiskFlag::MedicalEmergency], Co, &["welfare-check", "flag-medical-emergency"], &["ems"], &[]),
    ("suicide risk with means", "cad", "SUICTHRT", &[RiskFlag::SuicideRiskWithMeans], Co, &["suicidal-ideation", "flag-suicide-risk-with-means"], &["police", "ems"], &["clinician"]),
    ("danger to others", "cad", "EDP", &[RiskFlag::DangerToOthers], Co, &["mental-health", "flag-danger-to-others"], &["police"], &[]),
    ("overdose flag", "cad", "INTOX", &[RiskFlag::SubstanceOverdose], Traditional, &["intoxication", "flag-substance-overdose"], &["ems"], &[]),
    ("unconscious", "cad", "INTOX", &[RiskFlag::Unconscious], Traditional, &["intoxication", "flag-unconscious"], &["ems"], &[]),
    ("child at risk", "cad", "WELFARE", &[RiskFlag::ChildAtRisk], Co, &["welfare-check", "flag-child-at-risk"], &["police"], &[]),
    ("animal hazard", "cad", "WELFARE", &[RiskFlag::AnimalHazard], Co, &["welfare-check", "flag-animal-hazard"], &["animal_control"], &[]),
    ("crime in progress", "cad", "TRESPASS", &[RiskFlag::CrimeInProgress], Traditional, &["trespass", "flag-crime-in-progress"], &["police"], &[]),
    ("traffic hazard", "cad", "ASSIST", &[RiskFlag::TrafficHazard], Co, &["needs-assistance", "flag-traffic-hazard"], &["police"], &[]),
    ("fire or hazmat", "cad", "WELFARE", &[RiskFlag::FireOrHazmat], Traditional, &["welfare-check", "flag-fire-or-hazmat"], &["fire"], &[]),
    ("history of violence", "cad", "WELFARE", &[RiskFlag::HistoryOfViolenceToResponders], Co, &["welfare-check", "flag-history-of-violence"], &["police"], &[]),
    // Combinations: the most restrictive flag wins; review stays review unless a flag rules the team out.
    ("co-response and traditional flags", "cad", "EDP", &[RiskFlag::MedicalEmergency, RiskFlag::Weapons], Traditional, &["mental-health", "flag-weapons", "flag-medical-emergency"], &["police", "ems"], &[]),
    ("unknown type with a co-response flag", "cad", "ZZZ", &[RiskFlag::MedicalEmergency], Review, &["unknown_type", "flag-medical-emergency"], &["ems"], &[]),
    ("unknown type with weapons", "cad", "ZZZ", &[RiskFlag::Weapons], Traditional, &["unknown_type", "flag-weapons"], &["police"], &[]),
];

#[test]
fn every_rule_of_the_default_protocol_decides_as_documented() {
    let protocol = protocol();
    let mut covered = HashSet::new();
    for (case, cad, incident_type, flags, disposition, rules, co, caps) in TABLE {
        let decision = protocol.triage(cad, incident_type, flags, Disposition::Unspecified);
        assert_eq!(decision.disposition, *disposition, "{case}: disposition");
        assert_eq!(decision.rule_ids, *rules, "{case}: rules");
        assert_eq!(decision.co_responders, *co, "{case}: co-responders");
        assert_eq!(
            decision.required_capabilities, *caps,
            "{case}: capabilities"
        );
        assert_eq!(
            decision.reasons.len(),
            decision.rule_ids.len(),
            "{case}: one reason per rule"
        );
        covered.extend(decision.rule_ids);
    }
    let all: HashSet<String> = protocol
        .type_rules
        .iter()
        .map(|r| r.id.clone())
        .chain(protocol.flag_rules.iter().map(|r| r.id.clone()))
        .chain(["unknown_type".to_owned(), "unlisted_type".to_owned()])
        .collect();
    let missing: Vec<_> = all.difference(&covered).collect();
    assert!(missing.is_empty(), "rules without a table row: {missing:?}");
}

#[test]
fn flags_always_win_no_flagged_call_goes_to_a_community_team_alone() {
    let protocol = protocol();
    let flags: Vec<RiskFlag> = (1..=13).map(|n| RiskFlag::try_from(n).unwrap()).collect();
    let types: Vec<&str> = relay_intake::apco::CODES
        .iter()
        .copied()
        .chain(["UNKNOWN"])
        .collect();
    for incident_type in types {
        for flag in &flags {
            for dispatcher in [Disposition::Unspecified, Community, Co] {
                let decision = protocol.triage("cad", incident_type, &[*flag], dispatcher);
                assert_ne!(
                    decision.disposition, Community,
                    "{incident_type} with {flag:?} (override {dispatcher:?})"
                );
            }
        }
    }
}

#[test]
fn overrides_resolve_reviews_within_the_flag_rules() {
    let protocol = protocol();
    assert!(protocol.check_override(Review, &[], Community).is_ok());
    assert!(
        protocol
            .check_override(Review, &[RiskFlag::MedicalEmergency], Co)
            .is_ok()
    );
    assert!(
        protocol
            .check_override(Review, &[RiskFlag::MedicalEmergency], Community)
            .is_err()
    );
    assert!(
        protocol
            .check_override(Review, &[RiskFlag::Weapons], Co)
            .is_err()
    );
    assert!(protocol.check_override(Community, &[], Traditional).is_ok());
    assert!(protocol.check_override(Community, &[], Co).is_err());
    let decision = protocol.triage("cad", "ZZZ", &[], Community);
    assert_eq!(decision.disposition, Community);
    assert_eq!(decision.rule_ids, vec!["dispatcher_override"]);
}

fn refused(text: &str) -> (usize, String) {
    match Protocol::parse(text, "test.toml") {
        Err(ProtocolError::Invalid { line, reason, .. }) => (line, reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn default_with(from: &str, to: &str) -> String {
    let text = relay_intake::protocol::DEFAULT_PROTOCOL;
    assert!(text.contains(from), "{from}");
    text.replacen(from, to, 1)
}

fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).unwrap()].matches('\n').count() + 1
}

#[test]
fn bad_protocol_files_are_refused_with_the_line_and_the_reason() {
    let text = default_with(
        "types = [\"WELFARE\"]",
        "types = [\"WELFARE\", \"NOTACODE\"]",
    );
    let (line, reason) = refused(&text);
    assert_eq!(line, line_of(&text, "NOTACODE"));
    assert!(
        reason.contains("NOTACODE") && reason.contains("not an APCO code"),
        "{reason}"
    );

    let text = default_with("flag = \"WEAPONS\"", "flag = \"GUNS\"");
    let (line, reason) = refused(&text);
    assert_eq!(line, line_of(&text, "\"GUNS\""));
    assert!(reason.contains("not a risk flag"), "{reason}");

    let text = default_with("effect = \"traditional\"", "effect = \"community\"");
    let (line, reason) = refused(&text);
    assert_eq!(line, line_of(&text, "effect = \"community\""));
    assert!(
        reason.contains("never allows a community team alone"),
        "{reason}"
    );

    let text = default_with("disposition = \"community\"", "disposition = \"maybe\"");
    let (line, _) = refused(&text);
    assert_eq!(line, line_of(&text, "\"maybe\""));

    let text = default_with(
        "version = \"2026.1\"",
        "version = \"2026.1\"\nversion = \"2\"",
    );
    let (line, reason) = refused(&text);
    assert_eq!(line, line_of(&text, "version = \"2\""), "{reason}");

    let text = default_with(
        "[[flag_rules]]\nid = \"flag-weapons\"",
        "[[flag_rules]]\nid = \"flag-weapons\"\nunexpected = 1",
    );
    let (_, reason) = refused(&text);
    assert!(reason.contains("unexpected"), "{reason}");

    // Removing a flag rule leaves that flag undecided: refused.
    let text = default_with("flag = \"ANIMAL_HAZARD\"", "flag = \"WEAPONS\"");
    let (_, reason) = refused(&text);
    assert!(reason.contains("already has a rule"), "{reason}");

    let (line, reason) =
        refused("version = \"1\"\nunknown_type_reason = \"x\"\nunlisted_type_reason = \"y\"\n");
    assert_eq!(line, 4);
    assert!(reason.contains("no flag rule for WEAPONS"), "{reason}");
}

#[test]
fn a_protocol_is_loaded_from_a_configured_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("protocol.toml");
    std::fs::write(
        &path,
        default_with("version = \"2026.1\"", "version = \"local-7\""),
    )
    .unwrap();
    let protocol = Protocol::load(&path).unwrap();
    assert_eq!(protocol.version, "local-7");
    let missing = Protocol::load(&dir.path().join("missing.toml")).unwrap_err();
    assert!(missing.to_string().contains("missing.toml"));
}
