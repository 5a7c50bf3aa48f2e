//! Generated protobuf types and services, and the embedded descriptor set.
//!
//! The descriptor set keeps every option (HttpRule, access, nullable); the
//! transcoder, the auth layer and server reflection all read it.

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod tenlyr {
    pub mod v1 {
        tonic::include_proto!("tenlyr.v1");
    }
}

pub use tenlyr::v1;

/// The encoded `FileDescriptorSet` of every file under `proto/`, imports
/// included.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tenlyr_descriptor.bin"));

/// The package whose services Tenlyr serves.
pub const PACKAGE: &str = "tenlyr.v1";

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("descriptor set built by build.rs decodes")
});

/// The descriptor pool of the contract.
pub fn pool() -> &'static DescriptorPool {
    &POOL
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::LazyLock;

    use prost_reflect::DescriptorPool;

    static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
        DescriptorPool::decode(
            &include_bytes!(concat!(env!("OUT_DIR"), "/transcoding_test_descriptor.bin"))[..],
        )
        .expect("test descriptor set decodes")
    });

    /// Descriptors of `tests/proto/tenlyr/testing/v1/transcoding.proto`.
    pub fn pool() -> &'static DescriptorPool {
        &POOL
    }
}
