"""
Correct solutions in the styles students write, for the grader's own tests (instructor-only: this file holds
solutions): for each part, function bodies written from the docstrings and not from the reference, each of which
must get all of its part's points (issue 42: the tests must call and accept them all). course_cases.py builds
submissions from them and holds the real mistakes (each a variant with one change) and the cheats.
"""


VARIANTS = {
    "attention": [
        # a large negative number instead of -inf; F.dropout's default training=True (the caller passes p = 0
        # in eval mode)
        "d = q.shape[-1]\n"
        "scores = torch.matmul(q, k.transpose(-1, -2)) / d ** 0.5\n"
        "if real_keys is not None:\n"
        "    scores = scores.masked_fill(real_keys == False, -1e9)  # noqa: E712\n"
        "weights = torch.softmax(scores, dim=-1)\n"
        "weights = F.dropout(weights, p=dropout_p)\n"
        "return torch.matmul(weights, v)\n",
        # einsum, torch.where
        "scores = torch.einsum('bhqd,bhkd->bhqk', q, k) / math.sqrt(k.size(-1))\n"
        "if real_keys is not None:\n"
        "    scores = torch.where(real_keys, scores, torch.tensor(float('-inf')))\n"
        "p = scores.softmax(-1)\n"
        "if dropout_p > 0:\n"
        "    p = torch.nn.functional.dropout(p, dropout_p, training=True)\n"
        "return torch.einsum('bhqk,bhkd->bhqd', p, v)\n",
        # an additive mask of the dtype's lowest value
        "scale = 1.0 / math.sqrt(q.size(-1))\n"
        "scores = (q * scale) @ k.transpose(-2, -1)\n"
        "if real_keys is not None:\n"
        "    scores = scores + (~real_keys).to(scores.dtype) * torch.finfo(scores.dtype).min\n"
        "attn = F.softmax(scores, dim=-1)\n"
        "attn = F.dropout(attn, dropout_p, True)\n"
        "return attn @ v\n",
    ],
    "heads": [
        # chunk + view, and explicit_attention called by keyword (the stand-in used to refuse real_keys=)
        "B, L, D = x.size()\n"
        "H = self.cfg.num_heads\n"
        "q, k, v = self.qkv(x).chunk(3, dim=-1)\n"
        "split = lambda t: t.view(B, L, H, D // H).transpose(1, 2)\n"
        "q, k, v = split(q), split(k), split(v)\n"
        "if swap_qk:\n"
        "    q, k = k, q\n"
        "p = self.cfg.attention_dropout if self.training else 0.0\n"
        "if self.cfg.attention == 'explicit':\n"
        "    out = explicit_attention(q, k, v, real_keys=real_keys, dropout_p=p)\n"
        "else:\n"
        "    out = F.scaled_dot_product_attention(q, k, v, attn_mask=real_keys, dropout_p=p)\n"
        "out = out.transpose(1, 2).contiguous().view(B, L, D)\n"
        "return self.proj(out)\n",
        # reshape + permute, every argument positional
        "batch, length, hidden = x.shape\n"
        "heads = self.cfg.num_heads\n"
        "qkv = self.qkv(x).reshape(batch, length, 3, heads, hidden // heads)\n"
        "q = qkv[:, :, 0].permute(0, 2, 1, 3)\n"
        "k = qkv[:, :, 1].permute(0, 2, 1, 3)\n"
        "v = qkv[:, :, 2].permute(0, 2, 1, 3)\n"
        "if swap_qk:\n"
        "    q, k = k, q\n"
        "drop = self.cfg.attention_dropout if self.training else 0\n"
        "if self.cfg.attention == 'explicit':\n"
        "    y = explicit_attention(q, k, v, real_keys, drop)\n"
        "else:\n"
        "    y = F.scaled_dot_product_attention(q, k, v, real_keys, drop)\n"
        "return self.proj(y.permute(0, 2, 1, 3).reshape(batch, length, hidden))\n",
        # the fused weight split by hand, the swap done on the weights
        "d, h = self.cfg.hidden_size, self.cfg.num_heads\n"
        "wq, wk, wv = self.qkv.weight.split(d, dim=0)\n"
        "bq, bk, bv = self.qkv.bias.split(d)\n"
        "if swap_qk:\n"
        "    wq, wk, bq, bk = wk, wq, bk, bq\n"
        "def heads_of(w, b):\n"
        "    return F.linear(x, w, b).view(x.shape[0], x.shape[1], h, d // h).transpose(1, 2)\n"
        "q, k, v = heads_of(wq, bq), heads_of(wk, bk), heads_of(wv, bv)\n"
        "p = self.cfg.attention_dropout if self.training else 0.0\n"
        "if self.cfg.attention == 'explicit':\n"
        "    ctx = explicit_attention(q, k, v, real_keys, dropout_p=p)\n"
        "else:\n"
        "    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=real_keys, dropout_p=p)\n"
        "return self.proj(ctx.transpose(1, 2).reshape(x.shape[0], x.shape[1], d))\n",
    ],
    "layer": [
        # self.attention by keyword; F.dropout with the training flag instead of self.drop
        "a = self.attention(x, real_keys=real_keys, swap_qk=swap_qk)\n"
        "x = self.ln1(x + F.dropout(a, self.cfg.dropout, self.training))\n"
        "f = self.feed_forward(x)\n"
        "return self.ln2(x + F.dropout(f, p=self.cfg.dropout, training=self.training))\n",
        # the feed-forward network written out, the residual added the other way round
        "attn_out = self.drop(self.attention(x, real_keys, swap_qk))\n"
        "h = self.ln1(attn_out + x)\n"
        "ffn_out = self.drop(self.fc2(F.gelu(self.fc1(h))))\n"
        "return self.ln2(h + ffn_out)\n",
        "residual = x\n"
        "x = self.attention(x, real_keys, swap_qk=swap_qk)\n"
        "x = self.ln1(residual + self.drop(x))\n"
        "residual = x\n"
        "x = self.drop(self.feed_forward(x))\n"
        "x = self.ln2(residual + x)\n"
        "return x\n",
    ],
    "embeddings": [
        # positions by index, type 0 as zeros, F.dropout with the module's p
        "positions = torch.arange(length, device=input_ids.device)\n"
        "x = self.word(input_ids) + self.pos(positions)[None]\n"
        "if self.types is not None:\n"
        "    if token_type_ids is None:\n"
        "        token_type_ids = torch.zeros_like(input_ids)\n"
        "    x = x + self.types(token_type_ids)\n"
        "x = self.ln(x)\n"
        "return F.dropout(x, self.drop.p, self.training)\n",
        "pos = self.pos.weight[: input_ids.shape[1]].unsqueeze(0)\n"
        "emb = self.word(input_ids) + pos\n"
        "if self.types is not None:\n"
        "    emb = emb + (self.types.weight[0] if token_type_ids is None else self.types(token_type_ids))\n"
        "return self.drop(self.ln(emb))\n",
    ],
    "student_init": [
        # parameters copied module by module
        "import copy\n"
        "student = Bert(replace(teacher.cfg, num_layers=len(layers), type_vocab_size=0, pooler=False))\n"
        "with torch.no_grad():\n"
        "    student.emb.word.weight.copy_(teacher.emb.word.weight)\n"
        "    pos = teacher.emb.pos.weight.clone()\n"
        "    if fold_token_types and teacher.emb.types is not None:\n"
        "        pos += teacher.emb.types.weight[0]\n"
        "    student.emb.pos.weight.copy_(pos)\n"
        "    student.emb.ln.load_state_dict(teacher.emb.ln.state_dict())\n"
        "    student.head.load_state_dict(teacher.head.state_dict())\n"
        "    for j, i in enumerate(layers):\n"
        "        student.layers[j].load_state_dict(copy.deepcopy(teacher.layers[i].state_dict()))\n"
        "student.eval()\n"
        "return student\n",
        # the state dict renamed
        "student = Bert(replace(teacher.cfg, num_layers=len(layers), type_vocab_size=0, pooler=False))\n"
        "teacher_sd = teacher.state_dict()\n"
        "new_sd = {}\n"
        "for name, tensor in teacher_sd.items():\n"
        "    if name.startswith('layers.'):\n"
        "        idx = int(name.split('.')[1])\n"
        "        if idx in layers:\n"
        "            new_sd['layers.%d.%s' % (layers.index(idx), name.split('.', 2)[2])] = tensor.clone()\n"
        "    elif not name.startswith(('emb.types', 'pooler')):\n"
        "        new_sd[name] = tensor.clone()\n"
        "if fold_token_types and 'emb.types.weight' in teacher_sd:\n"
        "    new_sd['emb.pos.weight'] = new_sd['emb.pos.weight'] + teacher_sd['emb.types.weight'][0]\n"
        "student.load_state_dict(new_sd)\n"
        "return student.eval()\n",
    ],
    "kl": [
        # nn.functional.kl_div on probabilities (0 log 0 = 0 by xlogy)
        "s = F.log_softmax(student_logits / temperature, dim=-1)\n"
        "p = F.softmax(teacher_logits.detach() / temperature, dim=-1)\n"
        "return F.kl_div(s, p, reduction='none').sum(-1)\n",
        # xlogy by hand
        "T = temperature\n"
        "p = torch.softmax(teacher_logits.detach() / T, dim=-1)\n"
        "log_q = torch.log_softmax(student_logits / T, dim=-1)\n"
        "return (torch.special.xlogy(p, p) - p * log_q).sum(dim=-1)\n",
        # the NaN of 0 * -inf replaced
        "teacher = teacher_logits.detach()\n"
        "log_p = (teacher / temperature).log_softmax(-1)\n"
        "log_q = (student_logits / temperature).log_softmax(-1)\n"
        "kl = torch.nan_to_num(log_p.exp() * (log_p - log_q), nan=0.0)\n"
        "return kl.sum(-1)\n",
    ],
    "soft_targets": [
        # kl_per_row called by keyword (the stand-in used to refuse student_logits=), reduced by hand
        "per_row = kl_per_row(student_logits=student_logits, teacher_logits=teacher_logits, "
        "temperature=temperature)\n"
        "n = denom if denom is not None else student_logits.shape[0]\n"
        "return per_row.sum() / n * temperature ** 2\n",
        "per_row = kl_per_row(student_logits, teacher_logits, temperature)\n"
        "loss = per_row.mean() if denom is None else per_row.sum() / denom\n"
        "return loss * temperature * temperature\n",
    ],
    "mlm": [
        "flat = student_logits.reshape(-1, student_logits.size(-1))\n"
        "y = labels.reshape(-1)\n"
        "per_row = F.cross_entropy(flat, y, ignore_index=-100, reduction='none')[y != -100]\n"
        "return reduce_rows(per_row, denom)\n",
        # cross_entropy's sum, the count as a Python int
        "flat_logits = student_logits.flatten(0, -2)\n"
        "flat_labels = labels.flatten()\n"
        "loss_sum = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction='sum')\n"
        "if denom is None:\n"
        "    denom = max(int((flat_labels != -100).sum()), 1)\n"
        "return loss_sum / denom\n",
    ],
    "cosine": [
        "cos = F.cosine_similarity(student_hidden, teacher_hidden.detach(), dim=-1)\n"
        "loss = 1 - cos\n"
        "return loss.mean() if denom is None else loss.sum() / denom\n",
        "s = F.normalize(student_hidden, dim=-1)\n"
        "t = F.normalize(teacher_hidden.detach(), dim=-1)\n"
        "return reduce_rows(1 - (s * t).sum(-1), denom)\n",
        "ones = torch.ones(student_hidden.size(0))\n"
        "if denom is None:\n"
        "    return torch.nn.CosineEmbeddingLoss()(student_hidden, teacher_hidden.detach(), ones)\n"
        "total = torch.nn.CosineEmbeddingLoss(reduction='sum')(student_hidden, teacher_hidden.detach(), ones)\n"
        "return total / denom\n",
    ],
    "combine": [
        # the parts as Python floats (detached numbers: the docstring fixes no type)
        "weights = {'ce': alpha_ce, 'mlm': alpha_mlm, 'cos': alpha_cos, 'mse': alpha_mse}\n"
        "total = 0\n"
        "for name, loss in losses.items():\n"
        "    total = total + weights[name] * loss\n"
        "parts = {name: loss.item() for name, loss in losses.items()}\n"
        "parts['total'] = total.item()\n"
        "return total, parts\n",
        "names = list(losses)\n"
        "total = torch.stack([alphas[n] * losses[n] for n in names]).sum()\n"
        "parts = {n: losses[n].detach() for n in names}\n"
        "parts.update(total=total.detach())\n"
        "return total, parts\n",
    ],
    "masking": [
        # bernoulli for the uniform draw, boolean indexing for the actions
        "special = list(special_ids.values()) if isinstance(special_ids, dict) else list(special_ids)\n"
        "special = torch.tensor(special + [mask_id], device=input_ids.device)\n"
        "can_mask = (attention_mask == 1) & ~torch.isin(input_ids, special)\n"
        "if weights is None:\n"
        "    probs = torch.full(input_ids.shape, mlm_prob, device=input_ids.device)\n"
        "    chosen = torch.bernoulli(probs, generator=generator).bool() & can_mask\n"
        "else:\n"
        "    w = weights.to(input_ids.device).float()[input_ids].masked_fill(~can_mask, 0).view(-1)\n"
        "    n = min(math.ceil(mlm_prob * can_mask.sum().item()), int((w > 0).sum()))\n"
        "    chosen = torch.zeros(w.numel(), dtype=torch.bool, device=input_ids.device)\n"
        "    if n > 0:\n"
        "        chosen[torch.multinomial(w, n, replacement=False, generator=generator)] = True\n"
        "    chosen = chosen.view_as(input_ids)\n"
        "labels = input_ids.clone()\n"
        "labels[~chosen] = -100\n"
        "masked = input_ids.clone()\n"
        "r = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)\n"
        "to_mask = chosen & (r < mask_frac)\n"
        "to_random = chosen & (r >= mask_frac) & (r < mask_frac + random_frac)\n"
        "masked[to_mask] = mask_id\n"
        "allowed = torch.tensor([i for i in range(vocab_size) if i not in set(special.tolist())])\n"
        "pick = torch.randint(0, len(allowed), (int(to_random.sum()),), generator=generator)\n"
        "masked[to_random] = allowed[pick].to(input_ids.device)\n"
        "return masked, labels\n",
        # a lookup table of special ids, torch.where throughout
        "dev = input_ids.device\n"
        "specials = set(special_ids.values() if isinstance(special_ids, dict) else special_ids) | {mask_id}\n"
        "is_special = torch.zeros(vocab_size, dtype=torch.bool, device=dev)\n"
        "is_special[[s for s in specials if s < vocab_size]] = True\n"
        "eligible = attention_mask.bool() & ~is_special[input_ids]\n"
        "if weights is None:\n"
        "    chosen = (torch.rand(input_ids.shape, generator=generator, device=dev) < mlm_prob) & eligible\n"
        "else:\n"
        "    flat = torch.where(eligible, weights.to(dev, torch.float32)[input_ids], 0.0).flatten()\n"
        "    k = min(math.ceil(mlm_prob * eligible.sum().item() - 1e-9), int(torch.count_nonzero(flat)))\n"
        "    chosen = torch.zeros_like(flat, dtype=torch.bool)\n"
        "    if k > 0:\n"
        "        chosen[torch.multinomial(flat, k, replacement=False, generator=generator)] = True\n"
        "    chosen = chosen.view(input_ids.shape)\n"
        "labels = torch.where(chosen, input_ids, -100)\n"
        "u = torch.rand(input_ids.shape, generator=generator, device=dev)\n"
        "candidates = (~is_special).nonzero().flatten()\n"
        "rand_ids = candidates[torch.randint(len(candidates), input_ids.shape, generator=generator, device=dev)]\n"
        "out = torch.where(chosen & (u < mask_frac), mask_id, input_ids)\n"
        "out = torch.where(chosen & (u >= mask_frac) & (u < mask_frac + random_frac), rand_ids, out)\n"
        "return out, labels\n",
    ],
    "smoothing": [
        # torch all the way, special ids one by one
        "w = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1) ** -exponent\n"
        "for i in (special_ids.values() if isinstance(special_ids, dict) else special_ids):\n"
        "    w[i] = 0.0\n"
        "return w.float()\n",
        "w = np.power(np.clip(np.array(counts, dtype=float), 1, None), -exponent)\n"
        "ids = list(special_ids.values()) if isinstance(special_ids, dict) else list(special_ids)\n"
        "w[ids] = 0\n"
        "return torch.from_numpy(w).to(torch.float32)\n",
    ],
    "lr_schedule": [
        # max(0, ...) returns the int 0 past the end (the tests used to demand a float)
        "if warmup_steps and step < warmup_steps:\n"
        "    return step / warmup_steps\n"
        "return max(0, (total - step) / (total - warmup_steps))\n",
        "if step < warmup_steps:\n"
        "    return float(step) / float(max(1, warmup_steps))\n"
        "progress = (step - warmup_steps) / max(1, total - warmup_steps)\n"
        "return max(0.0, 1.0 - progress)\n",
    ],
    "denominators": [
        # counts as 0-d tensors, all_reduce(t, op=ReduceOp.SUM); n_real returned as a tensor (the step's
        # per-micro-batch counts, which the loop reads, computed when not given)
        "if counts is None:\n"
        "    counts = [(am.sum().item(), (lb != -100).sum().item()) for _, am, lb in batches]\n"
        "n_real = torch.tensor(float(sum(c[0] for c in counts)))\n"
        "n_masked = torch.tensor(float(sum(c[1] for c in counts)))\n"
        "step = torch.stack([n_real, n_masked])\n"
        "if ddp:\n"
        "    dist.all_reduce(step, op=dist.ReduceOp.SUM)\n"
        "n_real, n_masked = step[0], step[1]\n"
        "denoms = {'real': n_real / world, 'masked': n_masked.clamp(min=1) / world}\n"
        "denoms['ce'] = denoms['real'] if cfg.ce_positions == 'all' else denoms['masked']\n",
        # two tensors, all_reduce(t, ReduceOp.SUM) positional, Python ints
        "real = torch.tensor(0, dtype=torch.long)\n"
        "masked = torch.tensor(0, dtype=torch.long)\n"
        "mine = []\n"
        "for ids, am, labels in batches:\n"
        "    mine.append((int(am.sum()), int((labels != -100).sum())))\n"
        "    real += mine[-1][0]\n"
        "    masked += mine[-1][1]\n"
        "counts = counts if counts else mine\n"
        "if ddp:\n"
        "    dist.all_reduce(real, dist.ReduceOp.SUM)\n"
        "    dist.all_reduce(masked, dist.ReduceOp.SUM)\n"
        "n_real, n_masked = int(real), int(masked)\n"
        "denoms = dict(real=n_real / world, masked=max(n_masked, 1) / world)\n"
        "denoms['ce'] = denoms['real'] if cfg.ce_positions == 'all' else denoms['masked']\n",
        "counts = counts or [(int(am.sum()), int((lb != -100).sum())) for _, am, lb in batches]\n"
        "t = torch.tensor([float(sum(r for r, _ in counts)), float(sum(m for _, m in counts))])\n"
        "if ddp:\n"
        "    torch.distributed.all_reduce(t)\n"
        "n_real, n_masked = t.tolist()\n"
        "denoms = {'real': n_real / world, 'masked': max(n_masked, 1.0) / world}\n"
        "denoms['ce'] = denoms['masked'] if cfg.ce_positions == 'masked' else denoms['real']\n",
    ],
    "ptp": [
        "conf, pred = teacher_logits.softmax(-1).max(dim=-1)\n"
        "right = pred.eq(labels)\n"
        "out = torch.empty_like(labels)\n"
        "out[right & (conf > t1)] = 0\n"
        "out[right & (conf <= t1)] = 1\n"
        "out[~right & (conf > t2)] = 2\n"
        "out[~right & (conf <= t2)] = 3\n"
        "return out\n",
        "probs = torch.softmax(teacher_logits, dim=1)\n"
        "conf, pred = probs.max(1)\n"
        "unsure = torch.where(pred == labels, conf <= t1, conf <= t2)\n"
        "return 2 * (pred != labels).long() + unsure.long()\n",
    ],
    "pkd": [
        # soft_target_loss by keyword, the norms by hand, the parts by float()
        "ce = F.cross_entropy(student_logits, labels)\n"
        "kd = soft_target_loss(student_logits=student_logits, teacher_logits=teacher_logits, "
        "temperature=temperature)\n"
        "if student_cls is None or teacher_cls is None or student_cls.shape[1] == 0:\n"
        "    pt = torch.zeros((), device=student_logits.device)\n"
        "else:\n"
        "    s = student_cls / student_cls.norm(dim=-1, keepdim=True)\n"
        "    t = teacher_cls.detach() / teacher_cls.detach().norm(dim=-1, keepdim=True)\n"
        "    pt = ((s - t) ** 2).mean()\n"
        "loss = (1 - alpha) * ce + alpha * kd + beta * pt\n"
        "return loss, {'ce': float(ce), 'kd': float(kd), 'pt': float(pt)}\n",
        # the patient term a Python 0.0 without layers
        "hard = F.cross_entropy(student_logits, labels)\n"
        "soft = soft_target_loss(student_logits, teacher_logits, temperature)\n"
        "patient = 0.0\n"
        "if student_cls is not None and student_cls.size(1) > 0:\n"
        "    patient = F.mse_loss(F.normalize(student_cls, p=2, dim=-1),\n"
        "                         F.normalize(teacher_cls, p=2, dim=-1).detach())\n"
        "total = (1 - alpha) * hard + alpha * soft + beta * patient\n"
        "return total, {'ce': hard.item(), 'kd': soft.item(), 'pt': float(patient)}\n",
    ],
}
