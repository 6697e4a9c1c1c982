// The ibverbs backend's logic without a device: QP transitions, WR chains (opcode, imm byte
// order, zero-length writes), completion decoding with SRQ re-post, address blobs. The backend
// itself runs for real in the Soft-RoCE VM suite; here it must fail cleanly for lack of a device.
#include "../../../src/transport/verbs/verbs_logic.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <set>

namespace weightcast::transport::verbs {
namespace {

TEST(VerbsLogic, QpTransitions) {
  const Transition init = to_init(1);
  EXPECT_EQ(init.attr.qp_state, IBV_QPS_INIT);
  EXPECT_EQ(init.attr.port_num, 1);
  EXPECT_TRUE(init.attr.qp_access_flags & IBV_ACCESS_REMOTE_WRITE);
  EXPECT_EQ(init.mask, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
  ibv_gid zero{}, gid{};
  gid.raw[15] = 7;
  const Transition ib = to_rtr(0x123, 5, 42, zero, 1, 3, IBV_MTU_4096);
  EXPECT_EQ(ib.attr.dest_qp_num, 0x123u);
  EXPECT_EQ(ib.attr.ah_attr.dlid, 42);
  EXPECT_EQ(ib.attr.ah_attr.is_global, 0);  // InfiniBand: routed by LID
  const Transition roce = to_rtr(0x123, 5, 0, gid, 1, 3, IBV_MTU_1024);
  EXPECT_EQ(roce.attr.ah_attr.is_global, 1);  // RoCE: needs the GID and our GID index
  EXPECT_EQ(roce.attr.ah_attr.grh.sgid_index, 3);
  EXPECT_EQ(roce.attr.ah_attr.grh.dgid.raw[15], 7);
  EXPECT_TRUE(roce.mask & IBV_QP_AV);
  const Transition rts = to_rts(9);
  EXPECT_EQ(rts.attr.qp_state, IBV_QPS_RTS);
  EXPECT_EQ(rts.attr.sq_psn, 9u);
  EXPECT_EQ(rts.attr.rnr_retry, 7);
}

TEST(VerbsLogic, RecognisesIpv4MappedGids) {
  ibv_gid g{};
  EXPECT_FALSE(is_ipv4_mapped(g));
  g.raw[10] = g.raw[11] = 0xff;
  g.raw[12] = 10, g.raw[15] = 15;  // ::ffff:10.0.0.15
  EXPECT_TRUE(is_ipv4_mapped(g));
  g.raw[0] = 0xfe, g.raw[1] = 0x80;  // a link-local GID is not
  EXPECT_FALSE(is_ipv4_mapped(g));
}

TEST(VerbsLogic, ChainsWritesWithImmInNetworkOrder) {
  char buf[64];
  LocalMr src;
  src.base = buf;
  src.len = sizeof buf;
  std::vector<WriteOp> ops(3);
  for (size_t i = 0; i < ops.size(); ++i) {
    ops[i].id = 100 + i;
    ops[i].src = &src;
    ops[i].src_off = i * 8;
    ops[i].dst = {0x10000, 0xabc, 4096};
    ops[i].dst_off = i * 16;
    ops[i].len = i == 2 ? 0 : 8;
    ops[i].has_imm = i != 1;
    ops[i].imm = 0x01020304;
  }
  const std::vector<uint32_t> lkeys{11, 12, 13};
  Chain c;
  build_chain(ops, lkeys, c);
  ASSERT_EQ(c.wrs.size(), 3u);
  EXPECT_EQ(c.wrs[0].next, &c.wrs[1]);
  EXPECT_EQ(c.wrs[2].next, nullptr);
  EXPECT_EQ(c.wrs[0].opcode, IBV_WR_RDMA_WRITE_WITH_IMM);
  EXPECT_EQ(c.wrs[1].opcode, IBV_WR_RDMA_WRITE);
  EXPECT_EQ(c.wrs[0].imm_data, htonl(0x01020304));
  EXPECT_EQ(c.wrs[1].wr.rdma.remote_addr, 0x10000u + 16);
  EXPECT_EQ(c.wrs[1].wr.rdma.rkey, 0xabcu);
  EXPECT_EQ(c.sges[1].addr, reinterpret_cast<uint64_t>(buf) + 8);
  EXPECT_EQ(c.sges[1].lkey, 12u);
  EXPECT_EQ(c.wrs[2].num_sge, 0);  // zero-length shard: no SGE, still an immediate
  EXPECT_EQ(c.wrs[2].opcode, IBV_WR_RDMA_WRITE_WITH_IMM);
  EXPECT_TRUE(c.wrs[0].send_flags & IBV_SEND_SIGNALED);
  EXPECT_EQ(c.wrs[2].wr_id, 102u);
}

TEST(VerbsLogic, DecodesCompletions) {
  ibv_wc wc{};
  bool repost = false;
  wc.status = IBV_WC_SUCCESS;
  wc.opcode = IBV_WC_RECV_RDMA_WITH_IMM;
  wc.wr_id = kRecvWrId;
  wc.imm_data = htonl(0xdeadbeef);
  Completion c = decode(wc, repost);
  EXPECT_EQ(c.kind, Completion::Kind::kImm);
  EXPECT_EQ(c.imm, 0xdeadbeefu);
  EXPECT_TRUE(repost);
  wc.opcode = IBV_WC_RDMA_WRITE;
  wc.wr_id = 77;
  c = decode(wc, repost);
  EXPECT_EQ(c.kind, Completion::Kind::kWriteDone);
  EXPECT_EQ(c.id, 77u);
  EXPECT_FALSE(repost);
  wc.status = IBV_WC_RETRY_EXC_ERR;
  c = decode(wc, repost);
  EXPECT_EQ(c.kind, Completion::Kind::kError);
  EXPECT_NE(c.status.message().find("work request 77 failed: transport retry counter exceeded"),
            std::string::npos)
      << c.status.message();
  // A failed completion's opcode is undefined (here it looks like a receive): only the wr_id
  // says what it was.
  wc.opcode = IBV_WC_RECV_RDMA_WITH_IMM;
  wc.status = IBV_WC_WR_FLUSH_ERR;
  c = decode(wc, repost);
  EXPECT_FALSE(repost);
  EXPECT_EQ(c.id, 77u);
  wc.opcode = IBV_WC_RDMA_WRITE;
  wc.wr_id = kRecvWrId;
  c = decode(wc, repost);
  EXPECT_TRUE(repost);
  EXPECT_EQ(c.kind, Completion::Kind::kError);
  EXPECT_NE(c.status.message().find("pre-posted receive"), std::string::npos);
}

TEST(VerbsLogic, AddressRoundTrips) {
  Address a;
  a.rank = 3;
  a.lid = 9;
  a.gid.raw[0] = 0xfe;
  a.qpns = {10, 11, 12};
  auto b = a.serialize();
  auto back = Address::parse(b);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->rank, 3u);
  EXPECT_EQ(back->qpns, a.qpns);
  EXPECT_EQ(back->gid.raw[0], 0xfe);
  b.pop_back();
  EXPECT_FALSE(Address::parse(b));
}

TEST(VerbsDomain, FailsCleanlyWithoutADevice) {
  DomainConfig cfg;
  cfg.backend = "verbs";
  cfg.provider = "verbs";
  auto d = open_domain(cfg);
  if (d) GTEST_SKIP() << "this machine has an RDMA device: " << (*d)->caps().provider;
  EXPECT_NE(d.status().message().find("no RDMA device"), std::string::npos) << d.status().message();
  cfg.backend = "carrier-pigeon";
  EXPECT_EQ(open_domain(cfg).status().message(),
            "unknown transport backend 'carrier-pigeon' (expected fabric, verbs, ipc, hybrid or "
            "hybrid:verbs)");
}

// The backend table: every row named, described and openable; the layers above read it.
TEST(Backends, OneTableNamesEveryBackendAndWhatItIs) {
  std::set<std::string> names;
  for (const BackendInfo& b : backends()) {
    EXPECT_TRUE(names.insert(b.name).second) << b.name << " twice";
    EXPECT_GT(std::string(b.summary).size(), 10u) << b.name;
    EXPECT_NE(b.open, nullptr) << b.name;
    EXPECT_EQ(find_backend(b.name), &b);
  }
  EXPECT_EQ(backend_names(), "fabric, verbs, ipc, hybrid or hybrid:verbs");
  EXPECT_EQ(find_backend("nope"), nullptr);
  EXPECT_EQ(find_backend("Fabric"), nullptr);  // names are exact
  EXPECT_TRUE(find_backend("verbs")->nics_are_devices);
  EXPECT_TRUE(find_backend("hybrid:verbs")->nics_are_devices);
  EXPECT_FALSE(find_backend("hybrid")->nics_are_devices);
  EXPECT_EQ(find_backend("ipc")->links, BackendInfo::Links::kSameHost);
  EXPECT_EQ(find_backend("hybrid:verbs")->links, BackendInfo::Links::kHybrid);
  EXPECT_EQ(find_backend("fabric")->links, BackendInfo::Links::kNic);
  // Opening through the table reaches the backend itself: a fabric domain on loopback.
  DomainConfig cfg;
  cfg.address = "127.0.0.1";
  auto d = open_domain(cfg);
  ASSERT_TRUE(d) << d.status().message();
  EXPECT_EQ((*d)->caps().backend, "fabric");
  EXPECT_FALSE((*d)->caps().in_place_gpu_writes);
}

}  // namespace
}  // namespace weightcast::transport::verbs
