//! Loading a program: the user's file, the files it `use`s, and the standard
//! library, parsed into one namespace of blocks, models and train blocks.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::ast::{FuncDef, Item, Span, TrainDef};
use crate::{Diagnostic, SourceMap, parse};

/// The standard library, written in d2l; user definitions shadow it.
const STD_FILES: &[(&str, &str)] = &[
    ("<std>/activations.d2l", include_str!("../../std/activations.d2l")),
    ("<std>/layers.d2l", include_str!("../../std/layers.d2l")),
    ("<std>/losses.d2l", include_str!("../../std/losses.d2l")),
    ("<std>/recurrent.d2l", include_str!("../../std/recurrent.d2l")),
    ("<std>/attention.d2l", include_str!("../../std/attention.d2l")),
    ("<std>/transformer.d2l", include_str!("../../std/transformer.d2l")),
    ("<std>/bert.d2l", include_str!("../../std/bert.d2l")),
];

/// A front-end error, already rendered against its source text.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{rendered}")]
pub struct Error {
    pub rendered: String,
    /// The structured form, when the error points into source text.
    pub diagnostic: Option<Box<Diagnostic>>,
}

impl Error {
    pub(crate) fn from_diagnostic(d: Diagnostic, sources: &SourceMap) -> Error {
        Error { rendered: d.render(sources), diagnostic: Some(Box::new(d)) }
    }

    fn plain(message: String) -> Error {
        Error { rendered: format!("error: {message}\n"), diagnostic: None }
    }
}

pub(crate) struct Def {
    pub func: FuncDef,
    pub is_model: bool,
}

/// A parsed program: every definition visible to the user's models.
pub struct Program {
    pub sources: SourceMap,
    pub(crate) defs: HashMap<String, Def>,
    /// Models of the user's files, in source order.
    pub(crate) models: Vec<String>,
    pub(crate) trains: Vec<TrainDef>,
}

impl Program {
    /// Reads `path` and every file it `use`s (relative to the using file).
    pub fn load_file(path: &Path) -> Result<Program, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::plain(format!("cannot read {}: {e}", path.display())))?;
        // The entry file counts as loaded, so a `use` cycle back to it ends.
        let seen = path.canonicalize().into_iter().collect();
        Program::load_inner(&path.display().to_string(), &text, path.parent(), seen)
    }

    /// Loads source text; `use` paths resolve against `base_dir` if given.
    pub fn load(name: &str, text: &str, base_dir: Option<&Path>) -> Result<Program, Error> {
        Program::load_inner(name, text, base_dir, Vec::new())
    }

    fn load_inner(name: &str, text: &str, base_dir: Option<&Path>, seen: Vec<PathBuf>) -> Result<Program, Error> {
        let mut loader = Loader { prog: Program { sources: SourceMap::new(), defs: HashMap::new(), models: Vec::new(), trains: Vec::new() }, seen, origin: BTreeMap::new() };
        for (std_name, std_text) in STD_FILES {
            loader.add_source(std_name, std_text, None, true)?;
        }
        loader.add_source(name, text, base_dir.map(Path::to_path_buf), false)?;
        Ok(loader.prog)
    }

    pub(crate) fn error(&self, d: Diagnostic) -> Error {
        Error::from_diagnostic(d, &self.sources)
    }

    /// Names of the models defined in the user's files, in source order.
    pub fn model_names(&self) -> &[String] {
        &self.models
    }

    /// The model a command acts on when none is named: the first one of the
    /// user's file.
    pub fn default_model(&self) -> Option<&str> {
        self.models.first().map(String::as_str)
    }

    pub fn train_def(&self, model: &str) -> Option<&TrainDef> {
        self.trains.iter().find(|t| t.model.name == model)
    }
}

struct Loader {
    prog: Program,
    /// Canonical paths already loaded (a file `use`d twice is read once).
    seen: Vec<PathBuf>,
    /// Where each user definition came from, to report duplicates.
    origin: BTreeMap<String, (Span, bool)>,
}

impl Loader {
    fn add_source(&mut self, name: &str, text: &str, dir: Option<PathBuf>, is_std: bool) -> Result<(), Error> {
        let file = self.prog.sources.add(name, text);
        let module = parse(file, text).map_err(|d| self.prog.error(d))?;
        for item in module.items {
            match item {
                Item::Use { path, span } => self.add_use(&path, span, dir.as_deref())?,
                Item::Model(func) => self.add_def(func, true, is_std)?,
                Item::Block(func) => self.add_def(func, false, is_std)?,
                Item::Train(train) => {
                    if let Some(prev) = self.prog.trains.iter().find(|t| t.model.name == train.model.name) {
                        let d = Diagnostic::new(train.model.span, format!("model `{}` already has a train block", train.model.name))
                            .with_label("second train block")
                            .with_secondary(prev.model.span, "first one here");
                        return Err(self.prog.error(d));
                    }
                    self.prog.trains.push(train)
                }
            }
        }
        Ok(())
    }

    fn add_use(&mut self, path: &str, span: Span, dir: Option<&Path>) -> Result<(), Error> {
        let full = dir.map_or_else(|| PathBuf::from(path), |d| d.join(path));
        let text = match std::fs::read_to_string(&full) {
            Ok(t) => t,
            Err(e) => {
                let d = Diagnostic::new(span, format!("cannot read `{}`: {e}", full.display())).with_label("used here");
                return Err(self.prog.error(d));
            }
        };
        let canonical = full.canonicalize().unwrap_or_else(|_| full.clone());
        if self.seen.contains(&canonical) {
            return Ok(());
        }
        self.seen.push(canonical);
        let parent = full.parent().map(Path::to_path_buf);
        self.add_source(&full.display().to_string(), &text, parent, false)
    }

    fn add_def(&mut self, func: FuncDef, is_model: bool, is_std: bool) -> Result<(), Error> {
        let name = func.name.name.clone();
        if let Some(&(prev, prev_std)) = self.origin.get(&name) {
            // A user definition may shadow the standard library, nothing else.
            if !prev_std || is_std {
                let d = Diagnostic::new(func.name.span, format!("`{name}` is defined twice"))
                    .with_label("second definition")
                    .with_secondary(prev, "first definition");
                return Err(self.prog.error(d));
            }
        }
        self.origin.insert(name.clone(), (func.name.span, is_std));
        if is_model && !is_std {
            self.prog.models.retain(|m| *m != name);
            self.prog.models.push(name.clone());
        }
        self.prog.defs.insert(name, Def { func, is_model });
        Ok(())
    }
}
