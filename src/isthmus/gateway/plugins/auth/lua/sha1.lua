-- SHA-1 (FIPS 180-4, section 6.1) over LuaJIT's bit operations; returns the lowercase hex digest.
local bit = require("bit")
local band, bor, bxor, bnot, rol, lshift, tobit, tohex = bit.band, bit.bor, bit.bxor, bit.bnot, bit.rol, bit.lshift, bit.tobit, bit.tohex
local sbyte, schar, srep, floor = string.byte, string.char, string.rep, math.floor

local function be32(n)
  return schar(band(bit.rshift(n, 24), 255), band(bit.rshift(n, 16), 255), band(bit.rshift(n, 8), 255), band(n, 255))
end

local function sha1_hex(msg)
  local h0, h1, h2, h3, h4 = tobit(0x67452301), tobit(0xEFCDAB89), tobit(0x98BADCFE), tobit(0x10325476), tobit(0xC3D2E1F0)
  local bits = #msg * 8
  -- padding: a 1 bit, zeros, then the message length in bits as a 64-bit big-endian integer
  msg = msg .. "\128" .. srep("\0", (55 - #msg) % 64) .. be32(tobit(floor(bits / 4294967296))) .. be32(tobit(bits % 4294967296))
  local w = {}
  for off = 0, #msg - 1, 64 do
    for i = 0, 15 do
      local a, b, c, d = sbyte(msg, off + i * 4 + 1, off + i * 4 + 4)
      w[i] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
    end
    for i = 16, 79 do
      w[i] = rol(bxor(w[i - 3], w[i - 8], w[i - 14], w[i - 16]), 1)
    end
    local a, b, c, d, e = h0, h1, h2, h3, h4
    for i = 0, 79 do
      local f, k
      if i < 20 then
        f, k = bor(band(b, c), band(bnot(b), d)), 0x5A827999
      elseif i < 40 then
        f, k = bxor(b, c, d), 0x6ED9EBA1
      elseif i < 60 then
        f, k = bor(band(b, c), band(b, d), band(c, d)), 0x8F1BBCDC
      else
        f, k = bxor(b, c, d), 0xCA62C1D6
      end
      local t = tobit(rol(a, 5) + f + e + k + w[i])
      e, d, c, b, a = d, c, rol(b, 30), a, t
    end
    h0, h1, h2, h3, h4 = tobit(h0 + a), tobit(h1 + b), tobit(h2 + c), tobit(h3 + d), tobit(h4 + e)
  end
  return tohex(h0) .. tohex(h1) .. tohex(h2) .. tohex(h3) .. tohex(h4)
end
