'use strict';
// One client WebSocket frame, built by hand (RFC 6455 §5.2): masked, with the FIN and RSV1 bits
// as asked, for the frames the `ws` library will not send.
const crypto = require('node:crypto');

function wsFrame(op, payload, { mask = true, fin = true, rsv1 = false } = {}) {
    const p = Buffer.from(payload);
    const hdr = [(fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | op];
    const m = mask ? 0x80 : 0;
    if (p.length < 126) hdr.push(m | p.length);
    else if (p.length < 65536) hdr.push(m | 126, p.length >> 8, p.length & 0xff);
    else { hdr.push(m | 127); const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(p.length)); hdr.push(...b); }
    if (!mask) return Buffer.concat([Buffer.from(hdr), p]);
    const k = crypto.randomBytes(4);
    return Buffer.concat([Buffer.from(hdr), k, Buffer.from(p.map((x, i) => x ^ k[i & 3]))]);
}

module.exports = { wsFrame };
