// The rendezvous records: what encode() writes decodes to the same record, and nothing else
// decodes (values come from other processes).
#include "weightcast/session/records.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace weightcast::session {
namespace {

TEST(Records, ArmsRoundTripAndRefuseEverythingElse) {
  const ArmRecord a{18446744073709551615ull, 255, 4294967295u};
  EXPECT_EQ(a.encode(), "18446744073709551615 255 4294967295");
  auto b = ArmRecord::decode(a.encode());
  ASSERT_TRUE(b) << b.status().message();
  EXPECT_EQ(b->step, a.step);
  EXPECT_EQ(b->generation, 255);
  EXPECT_EQ(b->incarnation, a.incarnation);
  EXPECT_EQ(ArmRecord::decode("7 3 0")->generation, 3);
  for (const char* bad : {"", "7", "7 3", "7 3 1 9", "7 256 1", "7 -1 1", "-7 3 1",
                          "7 3 4294967296", "7  3 1", " 7 3 1", "7 3 1 ", "7 3 1\n", "7 0x3 1",
                          "7 3 1a", "18446744073709551616 1 1", "7 +3 1", "a b c"}) {
    auto r = ArmRecord::decode(bad);
    ASSERT_FALSE(r) << "'" << bad << "' decoded";
    EXPECT_EQ(r.status().code(), Code::kRemote);
    EXPECT_EQ(r.status().message().rfind("malformed arm record '", 0), 0u) << r.status().message();
  }
}

TEST(Records, UsedArmsRoundTripInReceiverOrder) {
  UsedArms u{12, 2, {{7, 900}, {0, 5}, {3, 18446744073709551615ull}}};
  EXPECT_EQ(u.encode(), "12 2 0:5 3:18446744073709551615 7:900");
  auto v = UsedArms::decode(u.encode());
  ASSERT_TRUE(v) << v.status().message();
  EXPECT_EQ(v->step, 12u);
  EXPECT_EQ(v->attempt, 2u);
  EXPECT_EQ(v->arms, u.arms);
  auto none = UsedArms::decode("3 1");
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->arms.empty());
  for (const char* bad : {"", "3", "3 1 5", "3 1 5:", "3 1 :5", "3 1 5:6:7", "3 1 5:6 5:7",
                          "3 1 5;6", "3 x", "3 1 4294967296:1", "3 1 1:-1"}) {
    EXPECT_FALSE(UsedArms::decode(bad)) << "'" << bad << "' decoded";
  }
  EXPECT_NE(UsedArms::decode("3 1 5:6 5:7").status().message().find("a receiver twice"),
            std::string::npos);
}

TEST(Records, IncarnationsAre32BitDecimals) {
  EXPECT_EQ(IncarnationRecord::decode("0")->value, 0u);
  EXPECT_EQ(IncarnationRecord::decode(IncarnationRecord{4294967295u}.encode())->value, 4294967295u);
  for (const char* bad : {"", "4294967296", "-1", "12abc", "1 2", " 1"})
    EXPECT_FALSE(IncarnationRecord::decode(bad)) << "'" << bad << "' decoded";
}

TEST(Records, PeerMetaRoundTripsAndNamesTheBadField) {
  const PeerMeta m{"fnv1a64:de9523709ef96392", 2, 140, 6840064};
  auto n = PeerMeta::decode(m.encode());
  ASSERT_TRUE(n) << n.status().message();
  EXPECT_EQ(n->plan_digest, m.plan_digest);
  EXPECT_EQ(n->nics, 2u);
  EXPECT_EQ(n->tensors, 140u);
  EXPECT_EQ(n->bytes, 6840064u);
  EXPECT_NE(PeerMeta::decode("d 1 x 9").status().message().find("bad tensor count"),
            std::string::npos);
  EXPECT_NE(PeerMeta::decode("d 1 2").status().message().find("expected DIGEST NICS"),
            std::string::npos);
  EXPECT_FALSE(PeerMeta::decode(" 1 2 3"));  // an empty digest
}

TEST(Records, ErrorsShowTheTextCutShortAndPrintable) {
  std::string junk(300, 'x');
  junk[5] = '\n';
  junk[6] = '\0';
  auto r = ArmRecord::decode(junk);
  ASSERT_FALSE(r);
  const std::string& msg = r.status().message();
  EXPECT_NE(msg.find("'xxxxx??xxx"), std::string::npos) << msg;
  EXPECT_NE(msg.find("...'"), std::string::npos) << msg;
  EXPECT_LT(msg.size(), 200u);
  const std::vector<uint8_t> bytes{'1', ' ', '2', ' ', '3'};
  EXPECT_EQ(ArmRecord::decode(text_of(bytes))->incarnation, 3u);
}

}  // namespace
}  // namespace weightcast::session
