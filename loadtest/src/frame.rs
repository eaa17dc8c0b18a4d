//! WebSocket frame headers (RFC 6455 §5.2): written by the harness's dashboards
//! (client frames, masked) and by the fan-out floor (server frames, unmasked).

/// Append the header of a final frame: FIN and `opcode`, the mask bit if
/// `masked` (the caller appends the mask key), and the payload length `len` in
/// the shortest form.
pub fn push_header(out: &mut Vec<u8>, opcode: u8, masked: bool, len: usize) {
    let mask_bit = if masked { 0x80 } else { 0 };
    out.push(0x80 | opcode);
    match len {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
}
