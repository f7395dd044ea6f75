//! The little of protobuf that CRIU's images need: a message's fields, read by hand (no
//! generated code for a handful of fields), and a varint writer for the requests of `swrk`.

/// The first magic number of every CRIU image (criu/include/magic.h).
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;

/// The one entry of an image file: its two magic numbers, then the entry's length and bytes.
/// `Err` says what is wrong with it.
pub fn single_entry(bytes: &[u8], primary: u32, secondary: u32, max_len: usize) -> Result<&[u8], &'static str> {
    let word = |i: usize| bytes.get(i..i + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    match (word(0), word(4), word(8)) {
        (Some(p), _, _) if p != primary => Err("primary magic not found"),
        (_, Some(s), _) if s != secondary => Err("secondary magic not found"),
        (_, _, None) => Err("shorter than its header"),
        (_, _, Some(len)) if len as usize > max_len || 12 + len as usize > bytes.len() => {
            Err("entry length is out of bounds")
        }
        (_, _, Some(len)) => Ok(&bytes[12..12 + len as usize]),
    }
}

/// Every entry of an image file that holds many (CRIU's `files.img`): the two magic numbers,
/// then length and bytes after length and bytes. `Err` says what is wrong with it.
pub fn entries(bytes: &[u8], primary: u32, secondary: u32, max_len: usize) -> Result<Vec<&[u8]>, &'static str> {
    let word = |i: usize| bytes.get(i..i + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    if word(0) != Some(primary) {
        return Err("primary magic not found");
    }
    if word(4) != Some(secondary) {
        return Err("secondary magic not found");
    }
    let mut rest = &bytes[8..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = rest.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
        match len {
            Some(len) if len <= max_len && 4 + len <= rest.len() => {
                out.push(&rest[4..4 + len]);
                rest = &rest[4 + len..];
            }
            _ => return Err("entry length is out of bounds"),
        }
    }
    Ok(out)
}

/// An image file holding `entry`, for test doubles that stand in for CRIU.
#[cfg(test)]
pub fn encode_image(primary: u32, secondary: u32, entry: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(primary.to_le_bytes());
    out.extend(secondary.to_le_bytes());
    out.extend((entry.len() as u32).to_le_bytes());
    out.extend(entry);
    out
}

/// A field's value: a varint, or the bytes of a length-delimited field (a nested message,
/// a string or a packed list). Fixed-width fields are skipped.
pub enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// The fields of one message, in order; `None` when it is malformed.
pub fn decode_message(mut buf: &[u8]) -> Option<Vec<(u64, Value<'_>)>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((field, Value::Varint(varint(&mut buf)?))),
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                if len > buf.len() {
                    return None;
                }
                out.push((field, Value::Bytes(&buf[..len])));
                buf = &buf[len..];
            }
            1 => buf = buf.get(8..)?,
            5 => buf = buf.get(4..)?,
            _ => return None,
        }
    }
    Some(out)
}

pub fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}
