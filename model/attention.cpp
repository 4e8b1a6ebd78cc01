#include "model/attention.h"

#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <limits>
#include <map>
#include <tuple>
#include <vector>

#include "model/dms.h"
#include "common/error.h"
#include "model/transformer.h"
#include "model/visibility.h"

namespace dms {

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
}  // namespace

AttentionImpl parse_attention_impl(const std::string& s, const std::string& where) {
  if (s == "blockwise") return AttentionImpl::blockwise;
  if (s == "dense") return AttentionImpl::dense;
  throw InputError(where + ": unknown attention '" + s + "' (blockwise or dense)");
}

at::Tensor dense_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const AttentionMask& mask, at::Tensor* probs) {
  const int64_t T = q.size(2);
  at::Tensor q_pos = at::arange(T, at::kLong);
  at::Tensor valid = mask.key_valid.defined() ? mask.key_valid.cpu() : at::Tensor();
  at::Tensor bias =
      attention_bias(q_pos, T, valid, mask.sliding_window).to(q.device());  // [B|1, 1, T, T]
  if (mask.key_term.defined())
    bias = dms_bias(mask.key_term, bias, q_pos, mask.window);  // [B, K, T, T]
  if (mask.key_mask.defined()) {
    at::Tensor hide = mask.key_mask.to(q.device()).logical_not();  // [B, K, T, T]
    bias = (bias + at::zeros(hide.sizes(), bias.options())).masked_fill(hide, -kInf);
  }
  return grouped_attention(q, k, v, bias, probs);
}

namespace {

// One tile: query rows [i0, i0 + ni) against keys [j0, j0 + nj).
struct Tile {
  int64_t i0, ni, j0, nj;
};

// Masks of a tile that depend only on its geometry (i0 - j0, ni, nj), as additive or
// multiplicative fp tensors [ni, nj] (undefined: not needed).
struct TileMasks {
  at::Tensor hidden;  // 0 visible, -inf hidden (causal, sliding window)
  at::Tensor far;     // 1 where i - j > window, else 0 (only for partially far tiles)
};

// What the blockwise passes share: the rules, the per-tile bias and a cache of the
// geometry masks (tiles on the same diagonal offset share them).
struct Rules {
  at::Tensor term;                      // [B, K, T] in the compute type, or undefined
  at::Tensor valid;                     // [B, T] bool on the device, or undefined
  std::vector<int64_t> invalid_prefix;  // invalid (b, j) pairs among keys < j (CPU)
  Visibility vis;                       // DMS window and the model's sliding window
  at::TensorOptions opts;               // compute type, device
  std::map<std::tuple<int64_t, int64_t, int64_t>, TileMasks> cache;

  // Ages i - j of a tile range from its bottom-left to its top-right corner.
  static int64_t min_age(const Tile& t) { return t.i0 - (t.j0 + t.nj - 1); }
  static int64_t max_age(const Tile& t) { return (t.i0 + t.ni - 1) - t.j0; }
  // Far (eviction-term) region of a tile: 0 none, 1 all, 2 some.
  int far_kind(const Tile& t) const {
    if (!term.defined()) return 0;
    if (vis.far(min_age(t))) return 1;
    if (!vis.far(max_age(t))) return 0;
    return 2;
  }
  bool has_padding(const Tile& t) const {
    return valid.defined() &&
           invalid_prefix[size_t(t.j0 + t.nj)] - invalid_prefix[size_t(t.j0)] > 0;
  }
  // i - j for the tile's rows and columns -> [ni, nj] int64
  static at::Tensor diff(const Tile& t, const at::TensorOptions& o) {
    const auto l = o.dtype(at::kLong);
    return at::arange(t.i0, t.i0 + t.ni, l).unsqueeze(1) - at::arange(t.j0, t.j0 + t.nj, l);
  }
  const TileMasks& masks(const Tile& t) {
    auto key = std::make_tuple(t.i0 - t.j0, t.ni, t.nj);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
    TileMasks m;
    // Some cell in the future, or outside the sliding window: the tile needs a hidden mask.
    const bool partly_hidden = !vis.causal(min_age(t)) || !vis.in_sliding(max_age(t));
    if (partly_hidden || far_kind(t) == 2) {
      at::Tensor dij = diff(t, opts);  // [ni, nj]
      if (partly_hidden)
        m.hidden =
            at::zeros({t.ni, t.nj}, opts).masked_fill_(vis.in_view(dij).logical_not(), -kInf);
      if (far_kind(t) == 2) m.far = vis.far(dij).to(opts.dtype());
    }
    return cache.emplace(key, m).first->second;
  }
  // Raw scores of a tile with its bias: qb [B*K, G*ni, d] (scaled), kb [B*K, nj, d]
  // -> [B, K, G, ni, nj] in the compute type.
  at::Tensor scores(const at::Tensor& qb, const at::Tensor& kb, const Tile& t, int64_t B,
                    int64_t K) {
    const int64_t G = qb.size(1) / t.ni;
    at::Tensor s = at::bmm(qb, kb.transpose(1, 2)).to(opts.dtype()).view({B, K, G, t.ni, t.nj});
    const TileMasks& m = masks(t);
    const int kind = far_kind(t);
    if (kind) {
      at::Tensor tj = term.narrow(2, t.j0, t.nj).view({B, K, 1, 1, t.nj});
      if (kind == 1)
        s.add_(tj);
      else
        s.addcmul_(m.far, tj);
    }
    if (m.hidden.defined()) s.add_(m.hidden);
    if (has_padding(t)) {
      // A padding key is hidden except from its own position.
      at::Tensor vj = valid.narrow(1, t.j0, t.nj).unsqueeze(1);            // [B, 1, nj]
      at::Tensor pad = vj.logical_not().logical_and(diff(t, opts).ne(0));  // [B, ni, nj]
      s.masked_fill_(pad.view({B, 1, 1, t.ni, t.nj}), -kInf);
    }
    return s;
  }
  // Key range of the query block [i0, i0 + ni): causal end, sliding-window start.
  std::pair<int64_t, int64_t> key_range(int64_t i0, int64_t ni) const {
    return {vis.first_key(i0), i0 + ni};
  }
};

// Query rows [i0, i0 + n) of x [B, H, T, e] as [B*K, G*n, e] (rows ordered g, then i).
at::Tensor query_rows(const at::Tensor& x, int64_t K, int64_t i0, int64_t n) {
  const int64_t B = x.size(0), H = x.size(1), e = x.size(3);
  return x.narrow(2, i0, n).reshape({B * K, (H / K) * n, e});
}

// Keys [j0, j0 + n) of x [B, K, T, e] as [B*K, n, e] (a view).
at::Tensor key_rows(const at::Tensor& x, int64_t j0, int64_t n) {
  return x.narrow(2, j0, n).reshape({x.size(0) * x.size(1), n, x.size(3)});
}

Rules make_rules(const at::Tensor& term, const at::Tensor& valid, int64_t window, int64_t sliding,
                 int64_t T, const at::TensorOptions& compute) {
  Rules r;
  r.opts = compute;
  // Hard (eval) terms are -inf; a large finite stand-in lets partially far tiles use
  // one multiply-add (0 * -inf would be NaN). exp() of it is exactly 0 all the same.
  if (term.defined()) r.term = term.to(compute.dtype()).clamp_min(-1e30);
  r.vis = Visibility{window, sliding};
  if (valid.defined()) {
    r.valid = valid;
    at::Tensor inv = valid.logical_not().sum(0).cpu().to(at::kLong).contiguous();  // [T]
    r.invalid_prefix.assign(size_t(T + 1), 0);
    for (int64_t j = 0; j < T; ++j)
      r.invalid_prefix[size_t(j + 1)] = r.invalid_prefix[size_t(j)] + inv.data_ptr<int64_t>()[j];
  }
  return r;
}

struct BlockwiseFunction : public torch::autograd::Function<BlockwiseFunction> {
  // q [B, H, T, d], k/v [B, K, T, d], term [B, K, T] (a 0-element tensor: none),
  // valid [B, T] bool (0 elements: none) -> out [B, H, T, d]
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                            const at::Tensor& k, const at::Tensor& v, const at::Tensor& term,
                            const at::Tensor& valid, int64_t window, int64_t sliding,
                            int64_t block_q, int64_t block_k) {
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3), K = k.size(1);
    const int64_t G = H / K;
    const at::ScalarType ct = at::promote_types(q.scalar_type(), at::kFloat);
    Rules rules =
        make_rules(term.numel() ? term : at::Tensor(), valid.numel() ? valid : at::Tensor(), window,
                   sliding, T, q.options().dtype(ct));
    at::Tensor qs = q * (1.0 / std::sqrt(double(d)));
    at::Tensor out = at::empty({B, H, T, d}, q.options());
    at::Tensor lse = at::empty({B, K, G, T}, q.options().dtype(ct));
    for (int64_t i0 = 0; i0 < T; i0 += block_q) {
      const int64_t ni = std::min(block_q, T - i0);
      at::Tensor qb = query_rows(qs, K, i0, ni);  // [B*K, G*ni, d]
      auto [lo, hi] = rules.key_range(i0, ni);
      at::Tensor m, l, acc;  // [B, K, G, ni, 1], [B, K, G, ni, 1], [B, K, G, ni, d]
      for (int64_t j0 = lo; j0 < hi; j0 += block_k) {
        const Tile t{i0, ni, j0, std::min(block_k, hi - j0)};
        at::Tensor s = rules.scores(qb, key_rows(k, t.j0, t.nj), t, B, K);
        at::Tensor m_new = s.amax(-1, /*keepdim=*/true);
        if (m.defined()) m_new = at::maximum(m_new, m);
        // A row with every key hidden so far keeps max -inf; shift by 0 so exp gives 0.
        at::Tensor shift = m_new.masked_fill(m_new.isinf(), 0.0);
        at::Tensor p = s.sub_(shift).exp_();  // [B, K, G, ni, nj]
        at::Tensor pv =
            at::bmm(p.to(v.scalar_type()).view({B * K, G * ni, t.nj}), key_rows(v, t.j0, t.nj))
                .to(ct)
                .view({B, K, G, ni, d});
        if (!m.defined()) {
          l = p.sum(-1, true);
          acc = pv;
        } else {
          at::Tensor scale = (m - shift).exp_();
          l = l.mul_(scale).add_(p.sum(-1, true));
          acc = acc.mul_(scale).add_(pv);
        }
        m = m_new;
      }
      // Every query sees at least itself, so l > 0 and the max is finite.
      out.narrow(2, i0, ni).copy_((acc / l).view({B, H, ni, d}));
      lse.narrow(3, i0, ni).copy_((m + l.log()).squeeze(-1));
    }
    ctx->save_for_backward({q, k, v, term, valid, out, lse});
    ctx->saved_data["window"] = window;
    ctx->saved_data["sliding"] = sliding;
    ctx->saved_data["block_q"] = block_q;
    ctx->saved_data["block_k"] = block_k;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &term = saved[3];
    const at::Tensor &valid = saved[4], &out = saved[5], &lse = saved[6];
    const int64_t window = ctx->saved_data["window"].toInt();
    const int64_t sliding = ctx->saved_data["sliding"].toInt();
    const int64_t block_q = ctx->saved_data["block_q"].toInt();
    const int64_t block_k = ctx->saved_data["block_k"].toInt();
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3), K = k.size(1);
    const int64_t G = H / K;
    const at::ScalarType ct = at::promote_types(q.scalar_type(), at::kFloat);
    const bool has_term = term.numel() > 0;
    const bool want_q = ctx->needs_input_grad(0), want_k = ctx->needs_input_grad(1);
    const bool want_v = ctx->needs_input_grad(2), want_t = has_term && ctx->needs_input_grad(3);
    Rules rules = make_rules(has_term ? term : at::Tensor(), valid.numel() ? valid : at::Tensor(),
                             window, sliding, T, q.options().dtype(ct));
    const double scale = 1.0 / std::sqrt(double(d));
    at::Tensor dout = grads[0].contiguous();
    at::Tensor qs = q * scale;
    // delta_i = sum_e dO_ie O_ie: the row term of the softmax gradient. [B, K, G, T, 1]
    at::Tensor delta = (dout.to(ct) * out.to(ct)).sum(-1).view({B, K, G, T, 1});
    at::Tensor dq = want_q ? at::zeros({B, H, T, d}, q.options().dtype(ct)) : at::Tensor();
    at::Tensor dk = want_k ? at::zeros({B, K, T, d}, k.options().dtype(ct)) : at::Tensor();
    at::Tensor dv = want_v ? at::zeros({B, K, T, d}, v.options().dtype(ct)) : at::Tensor();
    at::Tensor dterm = want_t ? at::zeros({B, K, T}, term.options().dtype(ct)) : at::Tensor();
    for (int64_t i0 = 0; i0 < T; i0 += block_q) {
      const int64_t ni = std::min(block_q, T - i0);
      at::Tensor qb = query_rows(qs, K, i0, ni);               // [B*K, G*ni, d]
      at::Tensor dob = query_rows(dout, K, i0, ni);            // [B*K, G*ni, d]
      at::Tensor lse_b = lse.narrow(3, i0, ni).unsqueeze(-1);  // [B, K, G, ni, 1]
      at::Tensor delta_b = delta.narrow(3, i0, ni);            // [B, K, G, ni, 1]
      at::Tensor dqb;                                          // [B*K, G*ni, d]
      auto [lo, hi] = rules.key_range(i0, ni);
      for (int64_t j0 = lo; j0 < hi; j0 += block_k) {
        const Tile t{i0, ni, j0, std::min(block_k, hi - j0)};
        at::Tensor kb = key_rows(k, t.j0, t.nj), vb = key_rows(v, t.j0, t.nj);  // [B*K, nj, d]
        at::Tensor p = rules.scores(qb, kb, t, B, K).sub_(lse_b).exp_();
        at::Tensor p3 = p.view({B * K, G * ni, t.nj});
        if (want_v)
          key_rows(dv, t.j0, t.nj).add_(at::bmm(p3.transpose(1, 2).to(v.scalar_type()), dob));
        if (!want_q && !want_k && !want_t) continue;
        // dS = P * (dP - delta), dP = dO V^T.  [B, K, G, ni, nj]
        at::Tensor ds = at::bmm(dob, vb.transpose(1, 2)).to(ct).view_as(p).sub_(delta_b).mul_(p);
        at::Tensor ds3 = ds.view({B * K, G * ni, t.nj}).to(q.scalar_type());
        if (want_q) {
          at::Tensor part = at::bmm(ds3, kb);
          dqb = dqb.defined() ? dqb.add_(part) : part.to(ct);
        }
        if (want_k) key_rows(dk, t.j0, t.nj).add_(at::bmm(ds3.transpose(1, 2), qb));
        if (want_t) {
          const int kind = rules.far_kind(t);
          if (kind == 1) dterm.narrow(2, t.j0, t.nj).add_(ds.sum({2, 3}));
          if (kind == 2) dterm.narrow(2, t.j0, t.nj).add_((ds * rules.masks(t).far).sum({2, 3}));
        }
      }
      if (want_q && dqb.defined()) dq.narrow(2, i0, ni).copy_(dqb.mul_(scale).view({B, H, ni, d}));
    }
    auto cast = [](const at::Tensor& g, const at::Tensor& like) {
      return g.defined() ? g.to(like.scalar_type()) : g;
    };
    return {cast(dq, q),  cast(dk, k),  cast(dv, v),  cast(dterm, term), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor blockwise_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const AttentionMask& mask, const AttentionBlocks& blocks) {
  if (blocks.q < 1 || blocks.k < 1)
    throw InputError("attention blocks must be at least 1 (got q " + std::to_string(blocks.q) +
                     ", k " + std::to_string(blocks.k) + ")");
  if (mask.window < 0) throw std::invalid_argument("blockwise_attention: window < 0");
  if (mask.key_mask.defined())
    throw std::invalid_argument("blockwise_attention: key_mask needs dense_attention");
  const auto none = [&](at::ScalarType t) { return at::empty({0}, q.options().dtype(t)); };
  at::Tensor term = mask.key_term.defined() ? mask.key_term : none(q.scalar_type());
  at::Tensor valid =
      mask.key_valid.defined() ? mask.key_valid.to(q.device(), at::kBool) : none(at::kBool);
  // Tiles are views of contiguous [B, h, T, d] tensors; the model's heads arrive as
  // transposed views of [B, T, h*d], which would make every tile a copy.
  return BlockwiseFunction::apply(q.contiguous(), k.contiguous(), v.contiguous(), term.contiguous(),
                                  valid, mask.window, mask.sliding_window, blocks.q, blocks.k);
}

}  // namespace dms
