//! Package layouts: a folder or a `.zip`, as a list of files named by their path inside it.

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use super::ImportError;

/// A folder or a zip, as a list of files named by their path inside it (`/` separated).
pub(super) enum Source {
    Folder {
        root: PathBuf,
        files: Vec<(String, u64)>,
    },
    Zip {
        path: String,
        archive: zip::ZipArchive<File>,
        files: Vec<(String, u64)>,
    },
}

/// Folders deeper than this inside a package are not looked into.
pub(super) const MAX_DEPTH: usize = 4;

fn skipped_entry(name: &str) -> bool {
    name.starts_with('.') || name == "__MACOSX"
}

fn list_folder(
    root: &Path,
    dir: &Path,
    depth: usize,
    out: &mut Vec<(String, u64)>,
) -> Result<(), ImportError> {
    let io = |source| ImportError::Io {
        path: dir.display().to_string(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if skipped_entry(&name) {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(io)?;
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                list_folder(root, &path, depth + 1, out)?;
            }
        } else if let Ok(relative) = path.strip_prefix(root) {
            let relative = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push((relative, meta.len()));
        }
    }
    Ok(())
}

impl Source {
    pub(super) fn open(path: &Path) -> Result<Self, ImportError> {
        let display = path.display().to_string();
        if path.is_dir() {
            let mut files = Vec::new();
            list_folder(path, path, 0, &mut files)?;
            files.sort();
            return Ok(Self::Folder {
                root: path.to_owned(),
                files,
            });
        }
        let file = File::open(path).map_err(|source| ImportError::Io {
            path: display.clone(),
            source,
        })?;
        let zip_error = |source| ImportError::Zip {
            path: display.clone(),
            source,
        };
        let mut archive = zip::ZipArchive::new(file).map_err(zip_error)?;
        let mut files = Vec::new();
        for index in 0..archive.len() {
            let entry = archive.by_index_raw(index).map_err(zip_error)?;
            let name = entry.name().to_owned();
            if entry.is_dir() || name.split('/').any(skipped_entry) {
                continue;
            }
            files.push((name, entry.size()));
        }
        files.sort();
        Ok(Self::Zip {
            path: display,
            archive,
            files,
        })
    }

    pub(super) fn files(&self) -> &[(String, u64)] {
        match self {
            Self::Folder { files, .. } | Self::Zip { files, .. } => files,
        }
    }

    /// The file at `wanted` (exactly, else ignoring case) and its size.
    pub(super) fn find(&self, wanted: &str) -> Option<(String, u64)> {
        let files = self.files();
        files
            .iter()
            .find(|(name, _)| name == wanted)
            .or_else(|| {
                files
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
            })
            .cloned()
    }

    pub(super) fn reader(&mut self, name: &str) -> Result<Box<dyn Read + '_>, ImportError> {
        match self {
            Self::Folder { root, .. } => {
                let path = root.join(name);
                let file = File::open(&path).map_err(|source| ImportError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                Ok(Box::new(file))
            }
            Self::Zip { path, archive, .. } => {
                let entry = archive.by_name(name).map_err(|source| ImportError::Zip {
                    path: path.clone(),
                    source,
                })?;
                Ok(Box::new(entry))
            }
        }
    }
}
