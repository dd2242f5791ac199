//! The rules directory: load, validate, lower.

pub mod credentials;
pub mod error;
pub mod load;
pub mod model;
pub mod raw;
pub mod replicate;
pub mod source;
pub mod units;
pub mod write;

pub use error::{Problem, Problems};
pub use load::{load_dir, load_documents};
pub use model::Rules;
