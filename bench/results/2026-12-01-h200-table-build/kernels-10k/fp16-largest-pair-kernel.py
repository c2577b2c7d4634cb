def triton_poi_fused__to_copy__unsafe_view_add_clone_constant_pad_nd_expand_index_mul_slice_split_unsqueeze_view_31(in_ptr0, in_ptr1, in_ptr2, in_ptr3, in_ptr4, in_ptr5, in_ptr6, in_ptr7, out_ptr0, xnumel, XBLOCK : tl.constexpr):
    xnumel = 503316480
    xoffset = tl.program_id(0) * XBLOCK
    xindex = xoffset + tl.arange(0, XBLOCK)[:]
    xmask = tl.full([XBLOCK], True, tl.int1)[:]
    x0 = (xindex % 768)
    x2 = xindex
    x1 = xindex // 768
    tmp0 = (-384) + x0
    tmp1 = tl.full([1], 0, tl.int64)
    tmp2 = tmp0 >= tmp1
    tmp3 = (x2 % 384)
    tmp4 = tl.full([1], 0, tl.int64)
    tmp5 = tmp3 >= tmp4
    tmp6 = tmp5 & tmp2
    tmp7 = tl.load(in_ptr0 + (384*(x1 // 64) + ((x0 % 384))), tmp6, other=0.0)
    tmp8 = 128 + ((x0 % 384))
    tmp9 = tl.full([1], 128, tl.int64)
    tmp10 = tmp8 < tmp9
    tmp11 = tmp10 & tmp2
    tmp12 = tl.load(in_ptr1 + (128 + 384*(x1 // 64) + ((x0 % 384))), tmp11, other=0.0)
    tmp13 = tl.load(in_ptr2 + (128 + 256*(x1 // 64) + ((x0 % 384))), tmp11, other=0.0)
    tmp14 = tmp12 + tmp13
    tmp15 = tl.full(tmp14.shape, 0.0, tmp14.dtype)
    tmp16 = tl.where(tmp11, tmp14, tmp15)
    tmp17 = tmp7 + tmp16
    tmp18 = tl.load(in_ptr3 + (x1), tmp2, eviction_policy='evict_last', other=0.0)
    tmp19 = tl.full([XBLOCK], 10240, tl.int32)
    tmp20 = tmp18 + tmp19
    tmp21 = tmp18 < 0
    tmp22 = tl.where(tmp21, tmp20, tmp18)
    tl.device_assert(((0 <= tl.broadcast_to(tmp22, [XBLOCK])) & (tl.broadcast_to(tmp22, [XBLOCK]) < 10240)) | ~(tmp2), "index out of bounds: 0 <= tl.broadcast_to(tmp22, [XBLOCK]) < 10240")
    tmp24 = tl.load(in_ptr4 + (128 + 768*tmp22 + ((x0 % 128))), tmp2, other=0.0)
    tmp25 = tl.load(in_ptr5 + (x1), tmp2, eviction_policy='evict_last', other=0.0)
    tmp26 = tmp25.to(tl.float16)
    tmp27 = tmp24 * tmp26
    tmp28 = tl.load(in_ptr6 + (128 + 384*x1 + ((x0 % 128))), tmp2, other=0.0)
    tmp29 = tmp27 * tmp28
    tmp30 = tmp17 * tmp29
    tmp31 = tl.full(tmp30.shape, 0.0, tmp30.dtype)
    tmp32 = tl.where(tmp2, tmp30, tmp31)
    tmp33 = x0
    tmp34 = tl.full([1], 384, tl.int64)
    tmp35 = tmp33 < tmp34
    tmp36 = tl.load(in_ptr7 + (x0 + 384*x1), tmp35, other=0.0)
    tmp37 = tl.load(in_ptr6 + (x0 + 384*x1), tmp35, other=0.0)
    tmp38 = tmp36 * tmp37
    tmp39 = tl.full(tmp38.shape, 0.0, tmp38.dtype)
    tmp40 = tl.where(tmp35, tmp38, tmp39)
    tmp41 = tmp32 + tmp40
    tl.store(out_ptr0 + (x2), tmp41, None)
''', device_str='cuda')
