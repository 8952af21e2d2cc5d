//! The `ridegate.v1` wire contract: prost messages, tonic clients and servers, and the
//! encoded descriptor set that server reflection serves (so grpcurl and ghz work without
//! the `.proto` files).
//!
//! Generated code stays behind [`pb`]; the rest of ridegate converts to its own domain
//! types at the edge and never passes these structs into the decision code.

#![forbid(unsafe_code)]

pub mod codec;

/// Generated `ridegate.v1` types, clients and servers.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("ridegate.v1");
}

/// The encoded `FileDescriptorSet` of every `ridegate.v1` file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ridegate_descriptor");

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_decodes_and_names_every_service() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
        let services: Vec<String> = set
            .file
            .iter()
            .filter(|f| f.package() == "ridegate.v1")
            .flat_map(|f| f.service.iter().map(|s| s.name().to_owned()))
            .collect();
        for wanted in [
            "Gate",
            "GateState",
            "HealthFeed",
            "Links",
            "HealthPlatform",
            "HealthSimulator",
        ] {
            assert!(
                services.iter().any(|s| s == wanted),
                "{wanted} missing from {services:?}"
            );
        }
    }
}
