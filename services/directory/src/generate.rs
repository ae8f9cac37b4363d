//! A synthetic directory: a seeded, deterministic metro area of services written as an HSDS
//! 3.0 tabular data package, for scale tests and the benchmark.
//!
//! The metro is a disc of [`METRO_RADIUS_METERS`] around Portland, Oregon, in
//! `America/Los_Angeles`. Each service has one organization (shared by five services), one
//! location, one taxonomy term from a two-level tree, English and sometimes other languages,
//! a phone, and one of a few kinds of opening hours (including overnight and 24/7). The same
//! seed gives the same package (with this version of `rand`).

use std::{fs::File, io::BufWriter, path::Path};

use chrono::{DateTime, Datelike, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// The metro's center (latitude, longitude).
pub const METRO_CENTER: (f64, f64) = (45.5152, -122.6784);
/// The metro's radius in meters.
pub const METRO_RADIUS_METERS: f64 = 30_000.0;
/// The metro's time zone.
pub const METRO_TIME_ZONE: &str = "America/Los_Angeles";

/// The taxonomy: (id, code, name, parent id, words used in descriptions).
pub const TAXONOMY: &[(&str, &str, &str, &str, &str)] = &[
    ("tx-bh", "BH", "Basic Needs", "", "basic needs"),
    (
        "tx-bh-shelter",
        "BH-1800",
        "Emergency Shelter",
        "tx-bh",
        "shelter beds overnight",
    ),
    (
        "tx-bh-food",
        "BD-1800",
        "Food Pantry",
        "tx-bh",
        "food pantry groceries",
    ),
    (
        "tx-bh-meals",
        "BD-5000",
        "Meals",
        "tx-bh",
        "hot meals soup kitchen",
    ),
    ("tx-rp", "RP", "Mental Health", "", "mental health"),
    (
        "tx-rp-crisis",
        "RP-1500",
        "Crisis Intervention",
        "tx-rp",
        "crisis counseling stabilization",
    ),
    (
        "tx-rp-counsel",
        "RP-6400",
        "Counseling",
        "tx-rp",
        "counseling therapy support groups",
    ),
    ("tx-rx", "RX", "Substance Use", "", "substance use"),
    (
        "tx-rx-detox",
        "RX-8450",
        "Detox",
        "tx-rx",
        "detox withdrawal recovery",
    ),
    ("tx-lh", "LH", "Health Care", "", "health care"),
    (
        "tx-lh-clinic",
        "LH-2700",
        "Community Clinic",
        "tx-lh",
        "clinic primary care nurse",
    ),
];

/// The leaf terms services are classified under (indexes into [`TAXONOMY`]).
const LEAVES: &[usize] = &[1, 2, 3, 5, 6, 8, 10];

const NEIGHBORHOODS: &[&str] = &[
    "Alberta",
    "Belmont",
    "Buckman",
    "Cully",
    "Foster",
    "Gateway",
    "Hawthorne",
    "Hollywood",
    "Kenton",
    "Lents",
    "Montavilla",
    "Overlook",
    "Pearl",
    "Sellwood",
    "Woodstock",
    "Irvington",
];

/// Opening hours of a generated location, in local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoursKind {
    /// Open all the time.
    AlwaysOpen,
    /// Monday to Friday, 09:00 to 17:00.
    Weekdays,
    /// Every day, 19:00 to 07:00 the next morning.
    Overnight,
    /// Saturday and Sunday, 10:00 to 14:00.
    Weekends,
    /// Monday, Wednesday, Friday 08:00 to 12:00.
    Mornings,
}

impl HoursKind {
    fn columns(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::AlwaysOpen => ("", "00:00", "24:00"),
            Self::Weekdays => ("MO,TU,WE,TH,FR", "09:00", "17:00"),
            Self::Overnight => ("", "19:00", "07:00"),
            Self::Weekends => ("SA,SU", "10:00", "14:00"),
            Self::Mornings => ("MO,WE,FR", "08:00", "12:00"),
        }
    }

    /// Whether these hours are open at `at`, computed directly (independently of the
    /// schedule evaluator) for checking search results.
    #[must_use]
    pub fn open_at(self, at: DateTime<Utc>) -> bool {
        let tz: Tz = METRO_TIME_ZONE.parse().unwrap_or(Tz::UTC);
        let local = at.with_timezone(&tz);
        let (day, minute) = (local.weekday(), local.hour() * 60 + local.minute());
        let weekday = !matches!(day, Weekday::Sat | Weekday::Sun);
        match self {
            Self::AlwaysOpen => true,
            Self::Weekdays => weekday && (540..1020).contains(&minute),
            Self::Overnight => !(420..1140).contains(&minute),
            Self::Weekends => !weekday && (600..840).contains(&minute),
            Self::Mornings => {
                matches!(day, Weekday::Mon | Weekday::Wed | Weekday::Fri)
                    && (480..720).contains(&minute)
            }
        }
    }
}

/// What the test needs to know about one generated service.
#[derive(Debug, Clone)]
pub struct GeneratedService {
    /// Service id.
    pub id: String,
    /// Location id.
    pub location_id: String,
    /// Coordinates.
    pub point: (f64, f64),
    /// Index into [`TAXONOMY`] of its term.
    pub term: usize,
    /// Its languages.
    pub languages: Vec<&'static str>,
    /// Its hours.
    pub hours: HoursKind,
    /// Its name.
    pub name: String,
}

/// Writes a package of `services` services to `dir` (created if needed) and returns what it
/// wrote. The row count of the package is about 9 per service.
///
/// # Errors
/// When a file cannot be written.
pub fn write_package(
    dir: &Path,
    services: usize,
    seed: u64,
) -> std::io::Result<Vec<GeneratedService>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Files::create(dir)?;
    for (id, code, name, parent, _) in TAXONOMY {
        files
            .terms
            .write_record([id, code, name, "", parent, "Relay synthetic"])?;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(services);
    for i in 0..services {
        if i % 5 == 0 {
            let hood = NEIGHBORHOODS[rng.random_range(0..NEIGHBORHOODS.len())];
            files.organizations.write_record([
                format!("org-{:06}", i / 5),
                format!("{hood} Community Services {}", i / 5),
                "A community nonprofit".to_owned(),
                format!("info{}@example.org", i / 5),
                "https://example.org".to_owned(),
            ])?;
        }
        let drawn = Drawn::draw(&mut rng, i);
        files.write_service(i, &drawn)?;
        out.push(drawn.service);
    }
    files.finish()?;
    Ok(out)
}

/// One service as drawn, with what its description says beyond the service itself.
struct Drawn {
    service: GeneratedService,
    hood: &'static str,
    youth: bool,
    /// Where, unrounded (the files write 6 decimals of it).
    lat: f64,
    lon: f64,
}

impl Drawn {
    /// The `i`th service: its term, neighborhood, audience, place, hours and languages,
    /// drawn from `rng` in this order (the package of a seed never changes).
    #[allow(clippy::cast_precision_loss)]
    fn draw(rng: &mut StdRng, i: usize) -> Self {
        let meters_per_degree = 111_320.0;
        let term = LEAVES[rng.random_range(0..LEAVES.len())];
        let (_, _, term_name, _, _) = TAXONOMY[term];
        let hood = NEIGHBORHOODS[rng.random_range(0..NEIGHBORHOODS.len())];
        let youth = rng.random_bool(0.2);
        let name = format!(
            "{hood} {}{term_name} {i}",
            if youth { "Youth " } else { "" }
        );
        let distance = METRO_RADIUS_METERS * rng.random::<f64>().sqrt();
        let angle = rng.random::<f64>() * std::f64::consts::TAU;
        let lat = METRO_CENTER.0 + distance * angle.sin() / meters_per_degree;
        let lon = METRO_CENTER.1
            + distance * angle.cos() / (meters_per_degree * METRO_CENTER.0.to_radians().cos());
        let hours = match rng.random_range(0..20) {
            0..=1 => HoursKind::AlwaysOpen,
            2..=11 => HoursKind::Weekdays,
            12..=14 => HoursKind::Overnight,
            15..=17 => HoursKind::Weekends,
            _ => HoursKind::Mornings,
        };
        let mut langs = vec!["en"];
        if rng.random_bool(0.3) {
            langs.push("es");
        }
        if rng.random_bool(0.05) {
            langs.push("vi");
        }
        if rng.random_bool(0.05) {
            langs.push("ru");
        }
        Self {
            service: GeneratedService {
                id: format!("svc-{i:06}"),
                location_id: format!("loc-{i:06}"),
                point: ((lat * 1e6).round() / 1e6, (lon * 1e6).round() / 1e6),
                term,
                languages: langs,
                hours,
                name,
            },
            hood,
            youth,
            lat,
            lon,
        }
    }
}

/// The package's CSV files, each with its header written.
struct Files {
    organizations: Csv,
    terms: Csv,
    svc: Csv,
    locations: Csv,
    addresses: Csv,
    sal: Csv,
    attributes: Csv,
    languages: Csv,
    phones: Csv,
    schedules: Csv,
}

type Csv = csv::Writer<BufWriter<File>>;

impl Files {
    fn create(dir: &Path) -> std::io::Result<Self> {
        let writer = |name: &str, header: &[&str]| -> std::io::Result<Csv> {
            let mut w = csv::Writer::from_writer(BufWriter::new(File::create(dir.join(name))?));
            w.write_record(header)?;
            Ok(w)
        };
        let organizations = writer(
            "organizations.csv",
            &["id", "name", "description", "email", "website"],
        )?;
        let terms = writer(
            "taxonomy_terms.csv",
            &["id", "code", "name", "description", "parent_id", "taxonomy"],
        )?;
        let svc = writer(
            "services.csv",
            &[
                "id",
                "organization_id",
                "name",
                "alternate_name",
                "description",
                "url",
                "email",
                "status",
                "last_modified",
            ],
        )?;
        let locations = writer(
            "locations.csv",
            &["id", "location_type", "name", "latitude", "longitude"],
        )?;
        let addresses = writer(
            "addresses.csv",
            &[
                "id",
                "location_id",
                "address_1",
                "city",
                "state_province",
                "postal_code",
                "country",
                "address_type",
            ],
        )?;
        let sal = writer(
            "service_at_location.csv",
            &["id", "service_id", "location_id"],
        )?;
        let attributes = writer(
            "attributes.csv",
            &[
                "id",
                "link_id",
                "taxonomy_term_id",
                "link_type",
                "link_entity",
                "value",
            ],
        )?;
        let languages = writer("languages.csv", &["id", "service_id", "name", "code"])?;
        let phones = writer("phones.csv", &["id", "service_id", "number", "type"])?;
        let schedules = writer(
            "schedules.csv",
            &[
                "id",
                "service_id",
                "location_id",
                "freq",
                "byday",
                "opens_at",
                "closes_at",
                "description",
            ],
        )?;
        Ok(Self {
            organizations,
            terms,
            svc,
            locations,
            addresses,
            sal,
            attributes,
            languages,
            phones,
            schedules,
        })
    }

    /// The rows of one drawn service in every file but organizations and terms.
    fn write_service(&mut self, i: usize, drawn: &Drawn) -> std::io::Result<()> {
        let Drawn {
            service,
            hood,
            youth,
            lat,
            lon,
        } = drawn;
        let (hood, youth, lat, lon) = (*hood, *youth, *lat, *lon);
        let (term_id, _, term_name, _, words) = TAXONOMY[service.term];
        let (id, location_id, name) = (&service.id, &service.location_id, &service.name);
        self.svc.write_record([
            id.as_str(),
            &format!("org-{:06}", i / 5),
            name,
            "",
            &format!(
                "{} {words} for {} in the {hood} neighborhood",
                term_name,
                if youth {
                    "youth"
                } else {
                    "adults and families"
                }
            ),
            "https://example.org/service",
            "",
            "active",
            "2026-01-01T00:00:00Z",
        ])?;
        self.locations.write_record([
            location_id.as_str(),
            "physical",
            &format!("{hood} site {i}"),
            &format!("{lat:.6}"),
            &format!("{lon:.6}"),
        ])?;
        self.addresses.write_record([
            &format!("addr-{i:06}"),
            location_id.as_str(),
            &format!("{} {hood} St", 100 + i % 9000),
            "Portland",
            "OR",
            "97201",
            "US",
            "physical",
        ])?;
        self.sal
            .write_record([format!("sal-{i:06}"), id.clone(), location_id.clone()])?;
        self.attributes.write_record([
            &format!("attr-{i:06}"),
            id.as_str(),
            term_id,
            "",
            "service",
            "",
        ])?;
        for code in &service.languages {
            self.languages
                .write_record([&format!("lang-{i:06}-{code}"), id.as_str(), "", code])?;
        }
        self.phones.write_record([
            format!("phone-{i:06}"),
            id.clone(),
            format!("+1503555{:04}", i % 10_000),
            "voice".into(),
        ])?;
        let (byday, opens, closes) = service.hours.columns();
        self.schedules.write_record([
            &format!("sched-{i:06}"),
            id.as_str(),
            location_id.as_str(),
            "WEEKLY",
            byday,
            opens,
            closes,
            "",
        ])?;
        Ok(())
    }

    /// Flushes every file.
    fn finish(self) -> std::io::Result<()> {
        for w in [
            self.organizations,
            self.terms,
            self.svc,
            self.locations,
            self.addresses,
            self.sal,
            self.attributes,
            self.languages,
            self.phones,
            self.schedules,
        ] {
            w.into_inner().map_err(|e| e.into_error())?;
        }
        Ok(())
    }
}
