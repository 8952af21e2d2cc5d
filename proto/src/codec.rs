//! A prost codec that reports undecodable request bytes as INVALID_ARGUMENT.
//!
//! tonic's stock codec maps every protobuf decode error to INTERNAL, which tells an
//! operator "ridegate is broken" when in fact a gate sent garbage. Everything else is
//! delegated to `tonic_prost::ProstCodec` unchanged.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// `ProstCodec` with decode errors mapped to [`Code::InvalidArgument`].
#[derive(Debug, Clone)]
pub struct StrictProstCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for StrictProstCodec<T, U> {
    fn default() -> Self {
        Self {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for StrictProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder {
            inner: self.inner.decoder(),
            _pd: PhantomData,
        }
    }
}

/// The decoding half of [`StrictProstCodec`].
#[derive(Debug)]
pub struct StrictDecoder<U> {
    inner: ProstDecoder<U>,
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner.decode(buf).map_err(|status| {
            if status.code() == Code::Internal {
                Status::invalid_argument(format!("malformed protobuf message: {}", status.message()))
            } else {
                status
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
