// Host side of the device projection (see project_cuda.h): the index arithmetic of
// plan::project_cpu, done once per input box, handed to the assembly kernel.
#include "weightcast/exec/project_cuda.h"

#include <fmt/format.h>

#include "cuda_kernels.h"
#include "weightcast/exec/cuda_project.h"
#include "weightcast/spec/layout.h"

namespace weightcast::exec {

namespace {

// One projection as kernel work: its inputs' assembly into the floats at scratch offset
// `x_off` (elements), and its conversion into staging. Every check of the plan's numbers is here.
Status describe(const spec::Inputs& in, const plan::Plan& plan, const plan::Project& pr,
                const plan::InputResolver& resolve, std::byte* staging, uint64_t staging_size,
                int64_t x_off, std::vector<kernels::AssembleInput>& ins, kernels::ConvertJob& job) {
  const plan::DestTensor& dt = plan.dests[pr.dest];
  const spec::DestParam& dp = in.inference.params[dt.param];
  const plan::Receiver& rv = plan.receivers[dt.receiver];
  const auto local = spec::dest_local(dp, in.inference.replicas[rv.replica], rv.rank);
  if (!local) return Status(Code::kInternal, "projection for a rank that holds nothing");
  const core::Shape bs = pr.box.extents();
  const int64_t n = bs.numel();
  const int nd = bs.nd;
  if (nd > kernels::kMaxDims) return invalid("projection box {} has too many dims", pr.box.str());
  int64_t bstride[kernels::kMaxDims] = {};
  for (int k = nd - 1, st = 1; k >= 0; --k) bstride[k] = st, st *= bs[k];
  int64_t covered = 0;
  for (const auto& inp : pr.inputs) {
    if (inp.part >= dp.parts.size())
      return invalid("projection input names part {} of '{}'", inp.part, dp.name);
    const spec::Part& part = dp.parts[inp.part];
    const spec::Param& sp = in.trainer.params[part.src];
    const plan::Held h = resolve(inp);
    if (!h.data || !h.box.contains(inp.src))
      return invalid("projection of '{}': source {} of '{}' is not held here (holds {})", dp.name,
                     inp.src.str(), sp.name, h.box.str());
    const core::Shape hs = h.box.extents();
    const auto& lp = local->parts[inp.part];
    kernels::AssembleInput a;
    a.src = h.data;
    a.dtype = sp.dtype;
    a.nd = nd;
    a.dst_base = x_off;
    int64_t hstride[kernels::kMaxDims] = {};
    for (int k = nd - 1, st = 1; k >= 0; --k) hstride[k] = st, st *= hs[k];
    for (int k = 0; k < nd; ++k) {
      a.ext[k] = inp.src.extent(k);
      a.src_stride[k] = hstride[k];
      a.src_base += (inp.src.lo[k] - h.box.lo[k]) * hstride[k];
    }
    // Source dim k lands in dest dim k, or in the other of the last two when transposed.
    auto dest_dim = [&](int k) {
      if (!part.transpose || nd < 2) return k;
      return k == nd - 1 ? nd - 2 : k == nd - 2 ? nd - 1 : k;
    };
    for (int k = 0; k < nd; ++k) {
      const int d = dest_dim(k);
      const int64_t v0 =
          inp.src.lo[k] - lp.global.lo[d] + (d == dp.concat_dim ? lp.offset : 0) - pr.box.lo[d];
      if (v0 < 0 || v0 + a.ext[k] > bs[d])
        return invalid("projection input {} maps outside its box {}", inp.src.str(), pr.box.str());
      a.dst_stride[k] = bstride[d];
      a.dst_base += v0 * bstride[d];
    }
    covered += inp.src.numel();
    ins.push_back(a);
  }
  if (covered != n)
    return invalid("projection box {}: inputs cover {} of {} elements", pr.box.str(), covered, n);
  const size_t esz = core::dtype_size(dt.dtype);
  if (pr.staging_off + static_cast<uint64_t>(n) * esz > staging_size)
    return invalid("projection runs past staging");
  job = {};
  job.n = n;
  job.out = staging + pr.staging_off;
  job.out_type = dt.dtype;
  if (pr.kind != plan::Project::Kind::kQuant) return Status::ok();
  const spec::Quant& q = *dp.quant;
  const int64_t R = bs[nd - 2], C = bs[nd - 1], lead = n / (R * C);
  if (pr.box.lo[nd - 2] % q.block_rows || C != dt.shape[nd - 1])
    return invalid("quantized box {} is not whole blocks of whole rows", pr.box.str());
  const int64_t sr = pr.scale_box.extent(nd - 2), sc = pr.scale_box.extent(nd - 1);
  if (sr != (R + q.block_rows - 1) / q.block_rows || sc != (C + q.block_cols - 1) / q.block_cols)
    return invalid("scale box {} does not match box {}", pr.scale_box.str(), pr.box.str());
  if (pr.scale_off + static_cast<uint64_t>(lead * sr * sc) * 4 > staging_size)
    return invalid("scales run past staging");
  job.quant = true;
  job.lead = lead;
  job.R = R;
  job.C = C;
  job.block_rows = q.block_rows;
  job.block_cols = q.block_cols;
  job.scales = reinterpret_cast<float*>(staging + pr.scale_off);
  return Status::ok();
}

// The projection described by `ins` (its inputs, dest offsets from `x_off`) and `job` as a
// fast-path job, when it is one: every input whole rows of the box, untransposed, one dtype.
bool as_fast(const std::vector<kernels::AssembleInput>& ins, const core::Shape& bs, int64_t x_off,
             const kernels::ConvertJob& job, kernels::FastJob& f) {
  const int nd = bs.nd;
  if (nd < 2 || ins.empty() || ins.size() > static_cast<size_t>(kernels::kFastInputs)) return false;
  f = {};
  f.nin = static_cast<int>(ins.size());
  f.nd1 = nd - 1;
  f.in_type = ins[0].dtype;
  for (int k = 0; k < nd - 1; ++k) f.ext[k] = bs[k];
  f.C = bs[nd - 1];
  f.out = job.out;
  f.out_type = job.out_type;
  f.quant = job.quant;
  f.block_rows = job.block_rows;
  f.block_cols = job.block_cols;
  f.scales = job.scales;
  int64_t bstride[kernels::kMaxDims] = {};
  for (int k = nd - 1, st = 1; k >= 0; --k) bstride[k] = st, st *= bs[k];
  for (size_t i = 0; i < ins.size(); ++i) {
    const kernels::AssembleInput& a = ins[i];
    if (a.dtype != f.in_type || a.ext[nd - 1] != f.C || a.src_stride[nd - 1] != 1) return false;
    kernels::FastInput& in = f.in[i];
    in.src = a.src;
    in.base = a.src_base;
    int64_t rest = a.dst_base - x_off;  // sum of v0[k] * bstride[k], 0 <= v0[k] < bs[k]
    for (int k = 0; k < nd; ++k) {
      if (a.dst_stride[k] != bstride[k]) return false;  // a transpose
      const int64_t v0 = rest / bstride[k];
      rest %= bstride[k];
      if (k == nd - 1) {
        if (v0 != 0) return false;
        continue;
      }
      in.lo[k] = v0;
      in.hi[k] = v0 + a.ext[k];
      in.stride[k] = a.src_stride[k];
    }
  }
  return kernels::fast_eligible(f);
}

}  // namespace

Status project_cuda_batch(const spec::Inputs& in, const plan::Plan& plan,
                          std::span<const plan::Project* const> ps, const BatchResolver& resolve,
                          std::byte* staging, uint64_t staging_size, Buffer& scratch, int device,
                          ProjectCounts* counts, std::span<const ProjectOut> outs) {
  if (!outs.empty() && outs.size() != ps.size())
    return invalid("project_cuda_batch: {} outputs for {} projections", outs.size(), ps.size());
  // Projections of whole rows read their sources once (the fast path); the others are
  // assembled into floats first.
  std::vector<kernels::AssembleInput> ins, one_ins;
  std::vector<kernels::ConvertJob> jobs;
  std::vector<kernels::FastJob> fast;
  int64_t total = 0;  // floats, every assembled projection's after the one before
  for (size_t k = 0; k < ps.size(); ++k) {
    const plan::InputResolver one = [&](const plan::Project::Input& i) {
      return resolve(*ps[k], i);
    };
    kernels::ConvertJob job;
    one_ins.clear();
    if (Status s = describe(in, plan, *ps[k], one, staging, staging_size, total, one_ins, job); !s)
      return s;
    if (!outs.empty() && outs[k].out) job.out = outs[k].out;
    if (!outs.empty() && outs[k].scales && job.quant) job.scales = outs[k].scales;
    if (kernels::FastJob f; as_fast(one_ins, ps[k]->box.extents(), total, job, f)) {
      fast.push_back(f);
      if (counts) ++counts->fast;
      continue;
    }
    if (counts) ++counts->assembled;
    ins.insert(ins.end(), one_ins.begin(), one_ins.end());
    jobs.push_back(job);
    total += job.n;
  }
  if (!fast.empty())
    if (Status s = kernels::convert_fast(fast.data(), static_cast<int>(fast.size())); !s) return s;
  if (jobs.empty()) return Status::ok();
  const uint64_t need = static_cast<uint64_t>(total) * 4;
  if (scratch.size() < need || scratch.kind() != MemoryKind::kCuda) {
    auto b = Buffer::allocate(MemoryKind::kCuda, need, device);
    if (!b) return b.status();
    scratch = std::move(b).value();
  }
  auto* x = reinterpret_cast<float*>(scratch.data());
  int64_t off = 0;
  for (kernels::ConvertJob& j : jobs) {
    j.x = x + off;
    off += j.n;
  }
  if (Status s = kernels::assemble(ins.data(), static_cast<int>(ins.size()), x); !s) return s;
  return kernels::convert(jobs.data(), static_cast<int>(jobs.size()));
}

Status project_cuda(const spec::Inputs& in, const plan::Plan& plan, const plan::Project& p,
                    const plan::InputResolver& resolve, std::byte* staging, uint64_t staging_size,
                    Buffer& scratch, int device, ProjectCounts* counts) {
  const plan::Project* one[] = {&p};
  return project_cuda_batch(
      in, plan, one,
      [&](const plan::Project&, const plan::Project::Input& i) { return resolve(i); }, staging,
      staging_size, scratch, device, counts);
}

}  // namespace weightcast::exec
