//! The triage protocol: a versioned, human-readable TOML rules file that decides who responds
//! to an incident (a community team alone, with police or EMS, or not at all).
//!
//! The file is loaded and validated once at start; a bad file is refused with the line and
//! the reason. Evaluation is pure: [`Protocol::triage`] maps an incident's type and risk flags
//! (and a dispatcher's override) to a [`Decision`]. Risk flags always win over the incident
//! type: a flag can only make a decision more restrictive, never less (guarantee 5).
//!
//! File format (see `protocol/default.toml`):
//! ```toml
//! version = "2026.1"
//! unknown_type_reason = "..."     # unknown codes: NEEDS_REVIEW
//! unlisted_type_reason = "..."    # APCO codes no type rule lists: TRADITIONAL_RESPONSE
//! unlisted_type_co_responders = ["police"]
//! [cad_mappings.county-cad]       # per-CAD local codes mapped to APCO codes
//! MH = "EDP"
//! [[type_rules]]                  # first match wins
//! id = "welfare-check"; types = ["WELFARE"]; disposition = "community"; reason = "..."
//! [[flag_rules]]                  # every risk flag must have exactly one rule
//! id = "flag-weapons"; flag = "WEAPONS"; effect = "traditional"; co_responders = ["police"]
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use relay_proto::intake::{Disposition, RiskFlag};
use serde::Deserialize;
use toml::Spanned;

use crate::apco;

mod source;
use source::Source;

/// The default protocol shipped with the crate.
pub const DEFAULT_PROTOCOL: &str = include_str!("../../protocol/default.toml");

/// The rule id recorded for a dispatcher's override.
pub const OVERRIDE_RULE_ID: &str = "dispatcher_override";
/// The rule id recorded when the incident type is neither APCO nor mapped.
pub const UNKNOWN_TYPE_RULE_ID: &str = "unknown_type";
/// The rule id recorded when an APCO code is listed by no type rule.
pub const UNLISTED_TYPE_RULE_ID: &str = "unlisted_type";

/// Why a protocol file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The file could not be read.
    #[error("protocol file {path}: {source}")]
    Read {
        /// The path that was read.
        path: String,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file is not valid or breaks a rule of the format.
    #[error("protocol file {origin}, line {line}: {reason}")]
    Invalid {
        /// Where the protocol came from (a path, or "default").
        origin: String,
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// How restrictive a disposition is; flags may only raise it.
fn rank(disposition: Disposition) -> u8 {
    match disposition {
        Disposition::CommunityResponse => 1,
        Disposition::CoResponse => 2,
        // NEEDS_REVIEW counts as TRADITIONAL_RESPONSE (the contract's ordering).
        Disposition::TraditionalResponse | Disposition::NeedsReview => 3,
        Disposition::Unspecified => 0,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtocol {
    version: Spanned<String>,
    #[serde(default)]
    description: String,
    unknown_type_reason: String,
    unlisted_type_reason: String,
    #[serde(default)]
    unlisted_type_co_responders: Vec<String>,
    #[serde(default)]
    cad_mappings: BTreeMap<String, BTreeMap<String, Spanned<String>>>,
    #[serde(default)]
    type_rules: Vec<Spanned<RawTypeRule>>,
    #[serde(default)]
    flag_rules: Vec<Spanned<RawFlagRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTypeRule {
    id: String,
    types: Vec<Spanned<String>>,
    disposition: Spanned<String>,
    reason: String,
    #[serde(default)]
    required_capabilities: Vec<String>,
    #[serde(default)]
    co_responders: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlagRule {
    id: String,
    flag: Spanned<String>,
    effect: Spanned<String>,
    reason: String,
    #[serde(default)]
    required_capabilities: Vec<String>,
    #[serde(default)]
    co_responders: Vec<String>,
}

/// One incident-type rule.
#[derive(Debug, Clone)]
pub struct TypeRule {
    /// Stable id, recorded in decisions.
    pub id: String,
    /// APCO codes it matches.
    pub types: Vec<String>,
    /// What it decides.
    pub disposition: Disposition,
    /// The sentence recorded in decisions.
    pub reason: String,
    /// Capabilities the community team needs.
    pub required_capabilities: Vec<String>,
    /// Agencies that respond alongside (or instead).
    pub co_responders: Vec<String>,
}

/// One risk-flag rule.
#[derive(Debug, Clone)]
pub struct FlagRule {
    /// Stable id, recorded in decisions.
    pub id: String,
    /// The flag it applies to.
    pub flag: RiskFlag,
    /// The least restrictive disposition the flag allows: CO_RESPONSE or TRADITIONAL_RESPONSE.
    pub effect: Disposition,
    /// The sentence recorded in decisions.
    pub reason: String,
    /// Capabilities the community team needs when it still goes.
    pub required_capabilities: Vec<String>,
    /// Agencies that must respond.
    pub co_responders: Vec<String>,
}

/// A loaded, validated protocol.
#[derive(Debug, Clone)]
pub struct Protocol {
    /// The protocol version recorded in every decision.
    pub version: String,
    /// What the protocol is, for people.
    pub description: String,
    unknown_type_reason: String,
    unlisted_type_reason: String,
    unlisted_type_co_responders: Vec<String>,
    cad_mappings: HashMap<String, HashMap<String, String>>,
    /// Type rules in evaluation order.
    pub type_rules: Vec<TypeRule>,
    /// Flag rules, one per risk flag.
    pub flag_rules: Vec<FlagRule>,
}

/// What the protocol decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Who responds.
    pub disposition: Disposition,
    /// One sentence per rule that contributed.
    pub reasons: Vec<String>,
    /// The rules that matched, in evaluation order.
    pub rule_ids: Vec<String>,
    /// Capabilities the community team needs.
    pub required_capabilities: Vec<String>,
    /// Agencies alongside or instead.
    pub co_responders: Vec<String>,
    /// The APCO code used (empty when unknown).
    pub apco_incident_type: String,
}

/// A dispatcher's override that the risk-flag rules forbid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideNotAllowed(pub String);

fn flag_from_name(name: &str) -> Option<RiskFlag> {
    RiskFlag::from_str_name(&format!("RISK_FLAG_{name}")).filter(|f| *f != RiskFlag::Unspecified)
}

/// The short name of a flag as the protocol file spells it (`WEAPONS`).
#[must_use]
pub fn flag_name(flag: RiskFlag) -> &'static str {
    flag.as_str_name()
        .strip_prefix("RISK_FLAG_")
        .unwrap_or("UNSPECIFIED")
}

fn push_unique(list: &mut Vec<String>, items: &[String]) {
    for item in items {
        if !list.contains(item) {
            list.push(item.clone());
        }
    }
}

impl Protocol {
    /// The protocol shipped with the crate.
    ///
    /// # Errors
    /// Never in a released build (a test parses it); the error is kept for symmetry.
    pub fn default_protocol() -> Result<Self, ProtocolError> {
        Self::parse(DEFAULT_PROTOCOL, "default")
    }

    /// Loads the protocol at `path`.
    ///
    /// # Errors
    /// When the file cannot be read or is invalid (with the line and reason).
    pub fn load(path: &Path) -> Result<Self, ProtocolError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProtocolError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates protocol text; `origin` names it in errors.
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`] with the 1-based line and the reason.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ProtocolError> {
        let src = Source { text, origin };
        let raw: RawProtocol = toml::from_str(text).map_err(|error| {
            let offset = error.span().map_or(0, |span| span.start);
            src.invalid(offset, error.message().to_owned())
        })?;
        if raw.version.get_ref().trim().is_empty() {
            return Err(src.invalid(raw.version.span().start, "version must not be empty".into()));
        }
        src.check_tags(
            0,
            "unlisted_type_co_responders",
            &raw.unlisted_type_co_responders,
        )?;
        let cad_mappings = src.cad_mappings(raw.cad_mappings)?;
        let mut ids = HashSet::new();
        let mut seen_types: HashMap<String, String> = HashMap::new();
        let type_rules = raw
            .type_rules
            .into_iter()
            .map(|spanned| src.type_rule(spanned, &mut ids, &mut seen_types))
            .collect::<Result<Vec<_>, _>>()?;
        let mut flags_seen = HashSet::new();
        let flag_rules = raw
            .flag_rules
            .into_iter()
            .map(|spanned| src.flag_rule(spanned, &mut ids, &mut flags_seen))
            .collect::<Result<Vec<_>, _>>()?;
        // Every flag must be decided: a flag without a rule would silently let an unsafe call
        // through (guarantee 5).
        let missing: Vec<&str> = (1..=13)
            .filter_map(|n| RiskFlag::try_from(n).ok())
            .filter(|flag| !flags_seen.contains(flag))
            .map(flag_name)
            .collect();
        if !missing.is_empty() {
            return Err(src.invalid(
                text.len(),
                format!("no flag rule for {}", missing.join(", ")),
            ));
        }
        Ok(Self {
            version: raw.version.into_inner(),
            description: raw.description,
            unknown_type_reason: raw.unknown_type_reason,
            unlisted_type_reason: raw.unlisted_type_reason,
            unlisted_type_co_responders: raw.unlisted_type_co_responders,
            cad_mappings,
            type_rules,
            flag_rules,
        })
    }

    /// The APCO code triage uses for `incident_type` from `cad_system`: the code itself, the
    /// mapped code, or `None` when unknown.
    #[must_use]
    pub fn apco_code(&self, cad_system: &str, incident_type: &str) -> Option<String> {
        if apco::is_code(incident_type) {
            return Some(incident_type.to_owned());
        }
        self.cad_mappings
            .get(cad_system)
            .and_then(|map| map.get(incident_type))
            .cloned()
    }

    /// The least restrictive disposition the flags allow, with their rules applied to `decision`.
    fn apply_flags(&self, flags: &[RiskFlag], decision: &mut Decision) -> Disposition {
        let mut ceiling = Disposition::CommunityResponse;
        for rule in &self.flag_rules {
            if !flags.contains(&rule.flag) {
                continue;
            }
            decision.rule_ids.push(rule.id.clone());
            decision.reasons.push(rule.reason.clone());
            push_unique(&mut decision.co_responders, &rule.co_responders);
            push_unique(
                &mut decision.required_capabilities,
                &rule.required_capabilities,
            );
            if rank(rule.effect) > rank(ceiling) {
                ceiling = rule.effect;
            }
        }
        ceiling
    }

    /// Decides an incident. `override_disposition` is a dispatcher's override in force
    /// (`Disposition::Unspecified` for none); flags still win over it.
    #[must_use]
    pub fn triage(
        &self,
        cad_system: &str,
        incident_type: &str,
        flags: &[RiskFlag],
        override_disposition: Disposition,
    ) -> Decision {
        let apco = self.apco_code(cad_system, incident_type);
        let mut decision = Decision {
            disposition: Disposition::NeedsReview,
            reasons: Vec::new(),
            rule_ids: Vec::new(),
            required_capabilities: Vec::new(),
            co_responders: Vec::new(),
            apco_incident_type: apco.clone().unwrap_or_default(),
        };
        let base = if override_disposition == Disposition::Unspecified {
            match &apco {
                None => {
                    decision.rule_ids.push(UNKNOWN_TYPE_RULE_ID.into());
                    decision.reasons.push(self.unknown_type_reason.clone());
                    Disposition::NeedsReview
                }
                Some(code) => match self.type_rules.iter().find(|r| r.types.contains(code)) {
                    Some(rule) => {
                        decision.rule_ids.push(rule.id.clone());
                        decision.reasons.push(rule.reason.clone());
                        push_unique(
                            &mut decision.required_capabilities,
                            &rule.required_capabilities,
                        );
                        push_unique(&mut decision.co_responders, &rule.co_responders);
                        rule.disposition
                    }
                    None => {
                        decision.rule_ids.push(UNLISTED_TYPE_RULE_ID.into());
                        decision.reasons.push(self.unlisted_type_reason.clone());
                        push_unique(
                            &mut decision.co_responders,
                            &self.unlisted_type_co_responders,
                        );
                        Disposition::TraditionalResponse
                    }
                },
            }
        } else {
            decision.rule_ids.push(OVERRIDE_RULE_ID.into());
            decision.reasons.push(format!(
                "a dispatcher set the disposition to {}",
                override_disposition.as_str_name()
            ));
            override_disposition
        };
        let ceiling = self.apply_flags(flags, &mut decision);
        // Flags win: the decision is at least as restrictive as every flag demands. A call
        // that needs review stays in review unless a flag rules a community team out.
        decision.disposition = if base == Disposition::NeedsReview {
            if ceiling == Disposition::TraditionalResponse {
                Disposition::TraditionalResponse
            } else {
                Disposition::NeedsReview
            }
        } else if rank(ceiling) > rank(base) {
            ceiling
        } else {
            base
        };
        if !matches!(
            decision.disposition,
            Disposition::CommunityResponse | Disposition::CoResponse
        ) {
            decision.required_capabilities.clear();
        }
        if decision.disposition == Disposition::CommunityResponse {
            decision.co_responders.clear();
        }
        decision
    }

    /// Checks a dispatcher's override against the current protocol decision (made without
    /// the override): it may always choose TRADITIONAL_RESPONSE, and may resolve NEEDS_REVIEW
    /// to any disposition the risk-flag rules allow.
    ///
    /// # Errors
    /// [`OverrideNotAllowed`] with the reason otherwise.
    pub fn check_override(
        &self,
        protocol_decision: Disposition,
        flags: &[RiskFlag],
        wanted: Disposition,
    ) -> Result<(), OverrideNotAllowed> {
        if wanted == Disposition::TraditionalResponse {
            return Ok(());
        }
        if protocol_decision != Disposition::NeedsReview {
            return Err(OverrideNotAllowed(format!(
                "only a NEEDS_REVIEW decision may be overridden to {}",
                wanted.as_str_name()
            )));
        }
        if wanted == Disposition::NeedsReview {
            return Err(OverrideNotAllowed(
                "the override must resolve the review".into(),
            ));
        }
        let mut scratch = Decision {
            disposition: Disposition::Unspecified,
            reasons: Vec::new(),
            rule_ids: Vec::new(),
            required_capabilities: Vec::new(),
            co_responders: Vec::new(),
            apco_incident_type: String::new(),
        };
        let ceiling = self.apply_flags(flags, &mut scratch);
        if rank(wanted) < rank(ceiling) {
            return Err(OverrideNotAllowed(format!(
                "risk flag rules {} forbid {}",
                scratch.rule_ids.join(", "),
                wanted.as_str_name()
            )));
        }
        Ok(())
    }
}

/// Whether `next` is more restrictive than `previous` (NEEDS_REVIEW counting as
/// TRADITIONAL_RESPONSE).
#[must_use]
pub fn more_restrictive(previous: Disposition, next: Disposition) -> bool {
    rank(next) > rank(previous)
}
