//! The APCO ANS 2.103 common incident category codes, as NENA's EIDO uses them
//! (`apcoIncidentCategoryCodeSimpleType` in `shared/eido/apco.yaml`, NENA911/EIDO-JSON commit
//! 7f62055). `incident_type` is one of these, or a CAD code mapped to one by the protocol.

/// Every APCO common incident category code, sorted.
pub const CODES: &[&str] = &[
    "911H", "911OPN", "ABDOM", "ABDUCTF", "ABDUCTNF", "ABUSE", "ACCIND", "ADMIN", "AIR", "ALIEN",
    "ALLERGIC", "ALRBA", "ALRBOX", "ALRBS", "ALRCO", "ALRCO2", "ALRDEFIB", "ALRF", "ALRGAS",
    "ALRHEAT", "ALRKPAD", "ALRMED", "ALRNGAS", "ALRPANA", "ALRPANS", "ALRPROPN", "ALRPULL",
    "ALRROBA", "ALRROBS", "ALRU", "ALRVEH", "ALRWTR", "ALS", "ANIMAL", "ASSAULT", "ASSIST", "ATL",
    "BACK", "BARICADE", "BIO", "BITE", "BLDCLPSE", "BLEEDING", "BLS", "BOMB", "BRGCLPSE",
    "BURGLARY", "BURN", "CARDIAC", "CARJACK", "CHEMICAL", "CHESPAIN", "CHOKE", "CITASST", "CIVDIS",
    "CIVIL", "CNTRFT", "CRIMPS", "CRIMTRAF", "CURFEW", "DEATH", "DEATHNTF", "DIABETIC", "DISORD",
    "DISVEH", "DROWN", "DRUGPAR", "DRUGS", "DUI", "DVA", "DVNA", "EDP", "ELEC", "ELECHZD",
    "ELUDING", "ENTRAP", "ESCAPE", "EXPLOS", "EXPOSURE", "EXTORT", "EYE", "FAIRC", "FALL", "FAPT",
    "FARSON", "FBRUSH", "FELEC", "FFUEL", "FIGHT", "FIREWRKS", "FMARINE", "FORCENTR", "FOTHER",
    "FRAUD", "FREPORT", "FSMOKE", "FSTRU", "FTRAILER", "FTRAIN", "FTRASH", "FTRUCK", "FUNK",
    "FVEH", "GASLEAK", "HARR", "HAZMAT", "HEADACHE", "HEMRG", "HOMICIDE", "HOSTAGE", "INDECENT",
    "INFO", "INTERNET", "INTOX", "INVEST", "LARCENY", "LIQUOR", "MAJORINC", "MAYDAY", "MCI",
    "MISBOATR", "MISCON", "MVA", "MVAHR", "MVAINJY", "MVAUNK", "NEGLECT", "NOISE", "OD", "ODOR",
    "OPEN", "ORDERV", "PANDEMIC", "PARKING", "PERFND", "PERMISS", "PERSUSP", "PERUNCON", "PERWANT",
    "PHANDLE", "PREG", "PROPFND", "PROPLOST", "PROPSTLN", "PUBWKS", "PURSUIT", "RADIAT", "RECKDRV",
    "REPO", "RESCUE", "RESIST", "RESP", "RESPARR", "ROBBERY", "RUNAWAY", "SAR", "SEIZURE",
    "SEXOFFNS", "SHOOT", "SHOPLIFT", "SICK", "SMOKING", "STABBING", "STDBY", "STROKE", "SUBJSTP",
    "SUICIDE", "SUICTHRT", "SUSP", "TERROR", "THAZ", "THREATS", "TOW", "TRAIN", "TRAINDRL",
    "TRANSFER", "TRAUMA", "TRAUMAP", "TRESPASS", "TROUBLE", "TRUANT", "TSTOP", "VANDAL", "VEHABND",
    "VEHASST", "VEHLOCK", "VEHREC", "VEHSTLN", "VEHSUSP", "VICE", "WARRANT", "WATER", "WEAPON",
    "WELFARE", "WILDLIFE", "WIRES", "XTRACATE",
];

/// Whether `code` is an APCO common incident category code (case-sensitive, as published).
#[must_use]
pub fn is_code(code: &str) -> bool {
    CODES.binary_search(&code).is_ok()
}
