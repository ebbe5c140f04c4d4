//! A minimal protocol-buffers writer: just what ONNX files need (varints, fixed32 floats,
//! length-delimited strings, bytes and nested messages). Pulling in a protobuf code generator
//! for one write-only format would cost more than these few lines.

/// One message being encoded.
#[derive(Default)]
pub struct Message(Vec<u8>);

const VARINT: u32 = 0;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

impl Message {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    fn raw_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.raw_varint(u64::from((field << 3) | wire));
    }

    /// An `int32`/`int64`/enum field (negative values as ten-byte two's complement).
    pub fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.key(field, VARINT);
        self.raw_varint(v as u64);
        self
    }

    /// A repeated integer field, one key per element (proto2's unpacked encoding).
    pub fn ints(&mut self, field: u32, vs: &[i64]) -> &mut Self {
        for &v in vs {
            self.int(field, v);
        }
        self
    }

    pub fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, FIXED32);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.key(field, LEN);
        self.raw_varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    pub fn string(&mut self, field: u32, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }

    pub fn message(&mut self, field: u32, m: &Message) -> &mut Self {
        self.bytes(field, &m.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_protobuf_spec() {
        // Examples from the protobuf encoding guide: field 1 = 150 is 08 96 01; field 2 =
        // "testing" is 12 07 74 65 73 74 69 6e 67.
        let mut m = Message::new();
        m.int(1, 150).string(2, "testing");
        assert_eq!(
            m.into_bytes(),
            [
                0x08, 0x96, 0x01, 0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g'
            ]
        );
        let mut m = Message::new();
        m.int(3, -1).float(4, 1.0);
        let b = m.into_bytes();
        assert_eq!(b[0], 0x18);
        assert_eq!(
            &b[1..11],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        assert_eq!(&b[11..], &[0x25, 0x00, 0x00, 0x80, 0x3f]);
    }
}
