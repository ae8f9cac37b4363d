//! Which files of a package are which HSDS tables: from its `datapackage.json` when it has
//! one, else from the files' names; and the order they are imported in.

use std::{io::Read, path::Path};

use super::{DESCRIPTOR, ImportError, package::Source};

/// What Relay does with an HSDS table. The order is the import order: a table comes after
/// the tables its rows refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Table {
    Organizations,
    TaxonomyTerms,
    Services,
    Locations,
    Addresses,
    ServiceAtLocation,
    /// 3.0 `attribute` and 2.0 `other_attribute` / `link_taxonomy`: only links of a service
    /// to a taxonomy term are kept.
    Attributes,
    /// 1.x `service_taxonomy` and 2.0 `service_attribute`.
    ServiceTaxonomy,
    Languages,
    Phones,
    /// 2.0 and 3.0 `schedule` (RFC 5545 style).
    Schedules,
    /// 1.x `regular_schedule` (one weekday a row).
    RegularSchedules,
    /// 1.x `holiday_schedule` (a date range, open or closed).
    HolidaySchedules,
    /// HSDS 3.1 draft `service_capacity` (not in 3.0), with Relay's `location_id` column: a
    /// location's latest capacity report, as `relay directory export` writes it.
    Capacity,
    /// An HSDS table Relay does not model: read, counted, ignored.
    NotModelled,
}

impl Table {
    /// The table a resource `name` (from a descriptor, or a file name without `.csv`) is,
    /// with `stem` the name of its file without `.csv` (`taxonomy` is the term list in 1.x,
    /// `taxonomy.csv`, but the list of vocabularies in 3.0, `taxonomies.csv`).
    pub(super) fn from_name(name: &str, stem: &str) -> Option<Self> {
        let name = name.trim().to_ascii_lowercase().replace(['-', ' '], "_");
        Some(match name.as_str() {
            "organization" | "organizations" => Self::Organizations,
            "taxonomy" if stem.eq_ignore_ascii_case("taxonomies") => Self::NotModelled,
            "taxonomy_term" | "taxonomy_terms" | "taxonomy" => Self::TaxonomyTerms,
            "service" | "services" => Self::Services,
            "location" | "locations" => Self::Locations,
            "address" | "addresses" | "physical_address" | "physical_addresses" => Self::Addresses,
            "service_at_location"
            | "services_at_location"
            | "service_at_locations"
            | "services_at_locations" => Self::ServiceAtLocation,
            "attribute" | "attributes" | "other_attribute" | "other_attributes"
            | "link_taxonomy" | "link_taxonomies" => Self::Attributes,
            "service_taxonomy"
            | "services_taxonomy"
            | "service_taxonomies"
            | "services_taxonomies"
            | "service_attribute"
            | "service_attributes" => Self::ServiceTaxonomy,
            "language" | "languages" => Self::Languages,
            "phone" | "phones" => Self::Phones,
            "schedule" | "schedules" => Self::Schedules,
            "regular_schedule" | "regular_schedules" => Self::RegularSchedules,
            "holiday_schedule" | "holiday_schedules" => Self::HolidaySchedules,
            "postal_address"
            | "postal_addresses"
            | "program"
            | "programs"
            | "contact"
            | "contacts"
            | "funding"
            | "fundings"
            | "eligibility"
            | "eligibilities"
            | "service_area"
            | "service_areas"
            | "required_document"
            | "required_documents"
            | "payment_accepted"
            | "payments_accepted"
            | "accessibility_for_disabilities"
            | "accessibility"
            | "accessibilities"
            | "cost_option"
            | "cost_options"
            | "organization_identifier"
            | "organization_identifiers"
            | "taxonomies"
            | "metadata"
            | "meta_table_description"
            | "meta_table_descriptions"
            | "url"
            | "urls"
            | "unit"
            | "units" => Self::NotModelled,
            "service_capacity" | "service_capacities" => Self::Capacity,
            _ => return None,
        })
    }

    /// The columns a row refers to other rows by (named when a referred row is missing).
    pub(super) fn references(self) -> &'static str {
        match self {
            Self::Services => "organization_id",
            Self::Addresses => "location_id",
            Self::ServiceAtLocation => "service_id, location_id",
            Self::Attributes => "link_id, taxonomy_term_id",
            Self::ServiceTaxonomy => "service_id, taxonomy_term_id",
            Self::Languages | Self::Phones => "service_id",
            Self::Capacity => "service_id, location_id",
            Self::Schedules | Self::RegularSchedules | Self::HolidaySchedules => {
                "service_id, location_id, service_at_location_id"
            }
            Self::Organizations | Self::TaxonomyTerms | Self::Locations | Self::NotModelled => "id",
        }
    }
}

/// One CSV file to read.
#[derive(Debug, Clone)]
pub(super) struct Planned {
    pub(super) table: Table,
    /// The resource's name, or the file's name without `.csv`.
    pub(super) name: String,
    /// The file, as named in the package.
    pub(super) file: String,
    /// Its size in bytes.
    pub(super) size: u64,
}

pub(super) fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

pub(super) fn stem(path: &str) -> &str {
    let base = base_name(path);
    match base.len().checked_sub(4) {
        Some(cut) if base.is_char_boundary(cut) && base[cut..].eq_ignore_ascii_case(".csv") => {
            &base[..cut]
        }
        _ => base,
    }
}

/// `relative` resolved against the folder `dir` (both `/` separated), or `None` when it
/// leaves the package.
fn resolve(dir: &str, relative: &str) -> Option<String> {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in relative.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

/// The package's descriptor, if any: the `datapackage.json` nearest the top.
fn find_descriptor(source: &Source) -> Option<String> {
    source
        .files()
        .iter()
        .map(|(name, _)| name)
        .filter(|name| base_name(name).eq_ignore_ascii_case(DESCRIPTOR))
        .min_by_key(|name| (name.matches('/').count(), (*name).clone()))
        .cloned()
}

/// The files to read, in import order, and what was left out, from the descriptor.
fn plan_from_descriptor(
    source: &mut Source,
    descriptor: &str,
) -> Result<(Vec<Planned>, Vec<String>), ImportError> {
    let fail = |reason: String| ImportError::Descriptor {
        path: descriptor.to_owned(),
        reason,
    };
    let mut text = String::new();
    source
        .reader(descriptor)?
        .read_to_string(&mut text)
        .map_err(|source| ImportError::Io {
            path: descriptor.to_owned(),
            source,
        })?;
    let json: serde_json::Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
        .map_err(|e| fail(format!("not valid JSON: {e}")))?;
    let resources = json
        .get("resources")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| fail("has no `resources` list".into()))?;
    let dir = descriptor
        .rsplit_once('/')
        .map_or("", |(dir, _)| dir)
        .to_owned();
    let mut planned = Vec::new();
    let mut notes = Vec::new();
    for (index, resource) in resources.iter().enumerate() {
        let name = resource
            .get("name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let label = if name.is_empty() {
            format!("resource {}", index + 1)
        } else {
            format!("resource `{name}`")
        };
        let path = match resource.get("path") {
            Some(serde_json::Value::String(path)) => path.clone(),
            Some(serde_json::Value::Array(_)) => {
                return Err(fail(format!(
                    "{label} is split over several files, which this importer does not read; join them into one CSV"
                )));
            }
            _ => {
                notes.push(format!(
                    "{descriptor}: {label} has no `path` (inline data is not read); skipped"
                ));
                continue;
            }
        };
        let table = Table::from_name(&name, stem(&path))
            .or_else(|| Table::from_name(stem(&path), stem(&path)));
        let Some(table) = table else {
            notes.push(format!(
                "{descriptor}: {label} (`{path}`) is not an HSDS table; skipped"
            ));
            continue;
        };
        if path.contains("://") {
            return Err(fail(format!(
                "{label} is at `{path}`, a URL; this importer reads only files inside the package"
            )));
        }
        let Some(wanted) = resolve(&dir, &path) else {
            return Err(fail(format!(
                "{label} path `{path}` points outside the package"
            )));
        };
        match source.find(&wanted) {
            Some((file, size)) => planned.push(Planned {
                table,
                name: if name.is_empty() {
                    stem(&path).to_owned()
                } else {
                    name
                },
                file,
                size,
            }),
            None if table == Table::NotModelled => notes.push(format!(
                "{descriptor}: {label} file `{wanted}` is not in the package; skipped (Relay does not use this table)"
            )),
            None => {
                return Err(fail(format!(
                    "{label} file `{wanted}` is not in the package"
                )));
            }
        }
    }
    Ok((planned, notes))
}

/// The files to read, in import order, and what was left out, from file names alone.
fn plan_from_names(source: &Source) -> (Vec<Planned>, Vec<String>) {
    let mut planned = Vec::new();
    let mut notes = Vec::new();
    for (file, size) in source.files() {
        if !base_name(file).to_ascii_lowercase().ends_with(".csv") {
            continue;
        }
        let name = stem(file);
        match Table::from_name(name, name) {
            Some(table) => planned.push(Planned {
                table,
                name: name.to_owned(),
                file: file.clone(),
                size: *size,
            }),
            None => notes.push(format!("{file} is not named after an HSDS table; skipped")),
        }
    }
    (planned, notes)
}

/// The files of the package to read, in import order, and what was left out.
pub(super) fn plan(
    source: &mut Source,
    package: &Path,
) -> Result<(Vec<Planned>, Vec<String>), ImportError> {
    let (mut planned, notes) = match find_descriptor(source) {
        Some(descriptor) => plan_from_descriptor(source, &descriptor)?,
        None => plan_from_names(source),
    };
    if !planned
        .iter()
        .any(|p| matches!(p.table, Table::Services | Table::Organizations))
    {
        return Err(ImportError::NotAPackage(package.display().to_string()));
    }
    planned.sort_by(|a, b| a.table.cmp(&b.table).then_with(|| a.file.cmp(&b.file)));
    planned.dedup_by(|a, b| a.file == b.file);
    Ok((planned, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_of_every_version() {
        for (name, stem, want) in [
            (
                "services_at_location",
                "services_at_location",
                Table::ServiceAtLocation,
            ),
            (
                "service_at_location",
                "services_at_location",
                Table::ServiceAtLocation,
            ),
            (
                "regular_schedule",
                "regular_schedules",
                Table::RegularSchedules,
            ),
            (
                "holiday_schedules",
                "holiday_schedules",
                Table::HolidaySchedules,
            ),
            ("physical_address", "physical_addresses", Table::Addresses),
            ("postal_addresses", "postal_addresses", Table::NotModelled),
            (
                "service_taxonomy",
                "services_taxonomy",
                Table::ServiceTaxonomy,
            ),
            (
                "service_attribute",
                "service_attributes",
                Table::ServiceTaxonomy,
            ),
            ("taxonomy", "taxonomy", Table::TaxonomyTerms),
            ("taxonomy", "taxonomies", Table::NotModelled),
            ("taxonomy_term", "taxonomy_terms", Table::TaxonomyTerms),
            ("attribute", "attributes", Table::Attributes),
            ("Schedules", "schedules", Table::Schedules),
            ("eligibility", "eligibility", Table::NotModelled),
            ("accessibility_for_disabilities", "x", Table::NotModelled),
        ] {
            assert_eq!(Table::from_name(name, stem), Some(want), "{name} {stem}");
        }
        assert_eq!(Table::from_name("readme", "readme"), None);
    }

    #[test]
    fn paths_resolve_inside_the_package_only() {
        assert_eq!(
            resolve("", "data/services.csv").as_deref(),
            Some("data/services.csv")
        );
        assert_eq!(
            resolve("export", "./data/../data/services.csv").as_deref(),
            Some("export/data/services.csv")
        );
        assert_eq!(resolve("", "../services.csv"), None);
        assert_eq!(stem("data/Services.CSV"), "Services");
    }
}
