//! Reading a protocol's text: each part checked, every error naming the line it is on.

use super::*;

/// Protocol text being read: errors name its origin and the line of the offending offset.
pub(super) struct Source<'a> {
    pub(super) text: &'a str,
    pub(super) origin: &'a str,
}

impl Source<'_> {
    pub(super) fn invalid(&self, offset: usize, reason: String) -> ProtocolError {
        ProtocolError::Invalid {
            origin: self.origin.to_owned(),
            line: self.text[..offset.min(self.text.len())]
                .matches('\n')
                .count()
                + 1,
            reason,
        }
    }

    pub(super) fn check_tags(
        &self,
        offset: usize,
        what: &str,
        tags: &[String],
    ) -> Result<(), ProtocolError> {
        for tag in tags {
            if !relay_runtime::validate::is_capability(tag) {
                return Err(self.invalid(
                    offset,
                    format!("{what} `{tag}` must match [a-z0-9:_-]{{1,32}}"),
                ));
            }
        }
        Ok(())
    }

    /// A rule's id (not empty, not used by another rule) and its reason (not empty).
    pub(super) fn check_rule(
        &self,
        start: usize,
        id: &str,
        reason: &str,
        ids: &mut HashSet<String>,
    ) -> Result<(), ProtocolError> {
        if id.is_empty() || !ids.insert(id.to_owned()) {
            return Err(self.invalid(start, format!("rule id `{id}` is empty or repeated")));
        }
        if reason.trim().is_empty() {
            return Err(self.invalid(start, format!("rule `{id}` has no reason")));
        }
        Ok(())
    }

    /// Each CAD's local incident types mapped to APCO codes.
    pub(super) fn cad_mappings(
        &self,
        raw: BTreeMap<String, BTreeMap<String, Spanned<String>>>,
    ) -> Result<HashMap<String, HashMap<String, String>>, ProtocolError> {
        let mut cad_mappings = HashMap::new();
        for (cad, mapping) in raw {
            let mut map = HashMap::new();
            for (local, target) in mapping {
                if !apco::is_code(target.get_ref()) {
                    return Err(self.invalid(
                        target.span().start,
                        format!(
                            "cad_mappings.{cad}.{local} maps to `{}`, which is not an APCO code",
                            target.get_ref()
                        ),
                    ));
                }
                map.insert(local, target.into_inner());
            }
            cad_mappings.insert(cad, map);
        }
        Ok(cad_mappings)
    }

    /// An incident-type rule; `seen_types` maps each type already decided to its rule.
    pub(super) fn type_rule(
        &self,
        spanned: Spanned<RawTypeRule>,
        ids: &mut HashSet<String>,
        seen_types: &mut HashMap<String, String>,
    ) -> Result<TypeRule, ProtocolError> {
        let start = spanned.span().start;
        let rule = spanned.into_inner();
        self.check_rule(start, &rule.id, &rule.reason, ids)?;
        let disposition = match rule.disposition.get_ref().as_str() {
            "community" => Disposition::CommunityResponse,
            "co_response" => Disposition::CoResponse,
            "traditional" => Disposition::TraditionalResponse,
            "needs_review" => Disposition::NeedsReview,
            other => {
                return Err(self.invalid(
                    rule.disposition.span().start,
                    format!(
                        "rule `{}`: disposition `{other}` is not one of community, co_response, traditional, needs_review",
                        rule.id
                    ),
                ));
            }
        };
        if rule.types.is_empty() {
            return Err(self.invalid(start, format!("rule `{}` lists no types", rule.id)));
        }
        let mut types = Vec::new();
        for code in rule.types {
            if !apco::is_code(code.get_ref()) {
                return Err(self.invalid(
                    code.span().start,
                    format!(
                        "rule `{}`: `{}` is not an APCO code",
                        rule.id,
                        code.get_ref()
                    ),
                ));
            }
            if let Some(other) = seen_types.insert(code.get_ref().clone(), rule.id.clone()) {
                return Err(self.invalid(
                    code.span().start,
                    format!(
                        "rule `{}`: type `{}` is already decided by rule `{other}`",
                        rule.id,
                        code.get_ref()
                    ),
                ));
            }
            types.push(code.into_inner());
        }
        self.check_tags(start, "required capability", &rule.required_capabilities)?;
        self.check_tags(start, "co-responder", &rule.co_responders)?;
        if disposition == Disposition::CoResponse && rule.co_responders.is_empty() {
            return Err(self.invalid(
                start,
                format!("rule `{}`: co_response needs co_responders", rule.id),
            ));
        }
        Ok(TypeRule {
            id: rule.id,
            types,
            disposition,
            reason: rule.reason,
            required_capabilities: rule.required_capabilities,
            co_responders: rule.co_responders,
        })
    }

    /// A risk-flag rule; `flags_seen` holds the flags that already have one.
    pub(super) fn flag_rule(
        &self,
        spanned: Spanned<RawFlagRule>,
        ids: &mut HashSet<String>,
        flags_seen: &mut HashSet<RiskFlag>,
    ) -> Result<FlagRule, ProtocolError> {
        let start = spanned.span().start;
        let rule = spanned.into_inner();
        self.check_rule(start, &rule.id, &rule.reason, ids)?;
        let Some(flag) = flag_from_name(rule.flag.get_ref()) else {
            return Err(self.invalid(
                rule.flag.span().start,
                format!(
                    "rule `{}`: `{}` is not a risk flag",
                    rule.id,
                    rule.flag.get_ref()
                ),
            ));
        };
        if !flags_seen.insert(flag) {
            return Err(self.invalid(
                rule.flag.span().start,
                format!(
                    "rule `{}`: flag {} already has a rule",
                    rule.id,
                    rule.flag.get_ref()
                ),
            ));
        }
        let effect = match rule.effect.get_ref().as_str() {
            "co_response" => Disposition::CoResponse,
            "traditional" => Disposition::TraditionalResponse,
            other => {
                return Err(self.invalid(
                    rule.effect.span().start,
                    format!(
                        "rule `{}`: effect `{other}` is not one of co_response, traditional (a flag never allows a community team alone)",
                        rule.id
                    ),
                ));
            }
        };
        self.check_tags(start, "required capability", &rule.required_capabilities)?;
        self.check_tags(start, "co-responder", &rule.co_responders)?;
        if rule.co_responders.is_empty() {
            return Err(self.invalid(
                start,
                format!(
                    "rule `{}`: a flag rule must name its co_responders",
                    rule.id
                ),
            ));
        }
        Ok(FlagRule {
            id: rule.id,
            flag,
            effect,
            reason: rule.reason,
            required_capabilities: rule.required_capabilities,
            co_responders: rule.co_responders,
        })
    }
}
