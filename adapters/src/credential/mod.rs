//! Credential verification: ride codes, verified in [`ride_code`]. The credential
//! types themselves are domain vocabulary and live in `ridegate_core::credential`.

pub mod ride_code;
