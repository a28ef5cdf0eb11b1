;; The two inner loops of XTS-AES (IEEE Std 1619-2007 §5.3.1, §5.4.1) around the AES calls that
;; node:crypto makes: the tweak sequence T ⊗ α^j and the XOR of 16-byte blocks with it. Source of
;; xts-simd-wasm.ts (regenerate: node scripts/build-wasm.mjs). Used by XtsAes256's tweak-ecb
;; engine where WebAssembly SIMD is available; JavaScript does the same otherwise.
;;
;; Memory (one instance per XtsAes256, never grown):
;;   [0, 2048)          SEEDS: up to 128 encrypted tweaks E_K2(i), 16 bytes each
;;   [4096, 69632)      T: the 32 block tweaks of each sector, 16 bytes each (128 sectors)
;;   [69632, 135168)    D: data being transformed (128 sectors)
(module
  (memory (export "memory") 3 3)

  ;; T ← for each of `n` seeds, T_j = seed ⊗ α^j for j = 0..31 (§5.2): the little-endian 128-bit
  ;; value shifted left by one bit, reduced by x^128 = x^7 + x^2 + x + 1 (0x87) on carry.
  (func (export "tweaks") (param $n i32)
    (local $s i32) (local $j i32) (local $out i32) (local $lo i64) (local $hi i64) (local $carry i64)
    (local.set $out (i32.const 4096))
    (block $done
      (loop $sectors
        (br_if $done (i32.ge_u (local.get $s) (local.get $n)))
        (local.set $lo (i64.load (i32.shl (local.get $s) (i32.const 4))))
        (local.set $hi (i64.load offset=8 (i32.shl (local.get $s) (i32.const 4))))
        (local.set $j (i32.const 0))
        (loop $blocks
          (i64.store (local.get $out) (local.get $lo))
          (i64.store offset=8 (local.get $out) (local.get $hi))
          (local.set $out (i32.add (local.get $out) (i32.const 16)))
          (local.set $carry (i64.shr_u (local.get $hi) (i64.const 63)))
          (local.set $hi
            (i64.or (i64.shl (local.get $hi) (i64.const 1)) (i64.shr_u (local.get $lo) (i64.const 63))))
          (local.set $lo
            (i64.xor (i64.shl (local.get $lo) (i64.const 1)) (i64.mul (local.get $carry) (i64.const 0x87))))
          (local.set $j (i32.add (local.get $j) (i32.const 1)))
          (br_if $blocks (i32.lt_u (local.get $j) (i32.const 32))))
        (local.set $s (i32.add (local.get $s) (i32.const 1)))
        (br $sectors))))

  ;; D[k] ← D[k] ⊕ T[k] for the first `bytes` bytes (a multiple of 16), 16 bytes at a time.
  (func (export "xorT") (param $bytes i32)
    (local $k i32)
    (block $done
      (loop $blocks
        (br_if $done (i32.ge_u (local.get $k) (local.get $bytes)))
        (v128.store offset=69632 (local.get $k)
          (v128.xor
            (v128.load offset=69632 (local.get $k))
            (v128.load offset=4096 (local.get $k))))
        (local.set $k (i32.add (local.get $k) (i32.const 16)))
        (br $blocks)))))
