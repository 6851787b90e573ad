// neutral_value (neutral_value.hpp): Python's equality and numeric hash rules, big ints, str /
// bytes, tuples, nested maps, conversions, and reference-count balance (every test checks that
// no heap block is left alive).
//
// The expected hashes were computed with CPython 3 on a 64-bit build (sys.hash_info.modulus =
// 2**61 - 1):  python3 -c "print(hash(2**61), hash(-1), hash(0.5), ...)".
#define PYPERSISTENT_NEUTRAL_COUNT_BLOCKS 1
#include <pypersistent/neutral_value.hpp>
#include <pypersistent/shared_map.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace {

using pypersistent::neutral_value;
using pypersistent::shared_map;
using nv = neutral_value;

std::int64_t live() { return pypersistent::neutral_detail::live_blocks.load(); }

// Every test must free every block it allocated.
class Neutral : public ::testing::Test {
protected:
    void SetUp() override { start_ = live(); }
    void TearDown() override { EXPECT_EQ(live(), start_) << "heap blocks leaked or freed twice"; }
    std::int64_t start_ = 0;
};

std::int64_t h(const nv& v) { return static_cast<std::int64_t>(v.hash()); }
nv big(const char* decimal) { return nv::from_decimal(decimal); }

void expect_same_key(const nv& a, const nv& b) {
    EXPECT_TRUE(a == b) << a.repr() << " == " << b.repr();
    EXPECT_TRUE(b == a) << b.repr() << " == " << a.repr();
    EXPECT_EQ(a.hash(), b.hash()) << a.repr() << " / " << b.repr();
}
void expect_different(const nv& a, const nv& b) {
    EXPECT_FALSE(a == b) << a.repr() << " != " << b.repr();
    EXPECT_FALSE(b == a) << b.repr() << " != " << a.repr();
}

TEST_F(Neutral, LayoutIsSixteenBytes) {
    static_assert(sizeof(nv) == 16, "");
    static_assert(std::is_nothrow_move_constructible<nv>::value, "");
    static_assert(std::is_nothrow_copy_constructible<nv>::value, "");
    static_assert(std::is_nothrow_destructible<nv>::value, "");
    nv none;
    EXPECT_TRUE(none.is_none());
    EXPECT_EQ(none.repr(), "None");
}

TEST_F(Neutral, PythonNumericHashes) {
    // python3: hash(v) for each v.
    EXPECT_EQ(h(big("2305843009213693952")), 1);                    // 2**61
    EXPECT_EQ(h(big("2305843009213693951")), 0);                    // 2**61 - 1
    EXPECT_EQ(h(nv(std::int64_t(2305843009213693950))), 2305843009213693950);  // 2**61 - 2
    EXPECT_EQ(h(nv(-1)), -2);
    EXPECT_EQ(h(nv(-2)), -2);
    EXPECT_EQ(h(nv(0)), 0);
    EXPECT_EQ(h(nv(0.5)), 1152921504606846976);
    EXPECT_EQ(h(nv(1.5)), 1152921504606846977);
    EXPECT_EQ(h(nv(-1.5)), -1152921504606846977);
    EXPECT_EQ(h(nv(1e300)), 1224995262755759164);
    EXPECT_EQ(h(nv(-1e300)), -1224995262755759164);
    EXPECT_EQ(h(nv(1e-300)), 482449582752280463);
    EXPECT_EQ(h(nv(0.1)), 230584300921369408);
    EXPECT_EQ(h(nv(123456789.123)), 283618680910892309);
    EXPECT_EQ(h(nv(std::ldexp(1.0, -1074))), 16777216);                        // 2.0**-1074
    EXPECT_EQ(h(nv(1.7976931348623157e308)), 2234066890152476671);
    EXPECT_EQ(h(nv(std::numeric_limits<double>::infinity())), 314159);
    EXPECT_EQ(h(nv(-std::numeric_limits<double>::infinity())), -314159);
    EXPECT_EQ(h(nv(-0.0)), 0);
    EXPECT_EQ(h(nv(std::nan(""))), 0);                                          // sys.hash_info.nan
    EXPECT_EQ(h(big("-1267650600228229401496703205376")), -549755813888);      // -2**100
    EXPECT_EQ(h(big("1267650600228229401496703205376")), 549755813888);        // 2**100
    EXPECT_EQ(h(big("9223372036854775808")), 4);                                // 2**63
    EXPECT_EQ(h(nv(std::numeric_limits<std::int64_t>::max())), 3);              // 2**63 - 1
    EXPECT_EQ(h(nv(std::numeric_limits<std::int64_t>::min())), -4);             // -2**63
    EXPECT_EQ(h(big("-9223372036854775809")), -5);                              // -2**63 - 1
    EXPECT_EQ(h(big("18446744073709551616")), 8);                               // 2**64
    EXPECT_EQ(h(nv(std::uint64_t(18446744073709551615ull))), 7);                // 2**64 - 1
    EXPECT_EQ(h(big("-18446744073709551616")), -8);                             // -2**64
    EXPECT_EQ(h(big("18446744073709551617")), 9);                               // 2**64 + 1
    EXPECT_EQ(h(nv(std::ldexp(1.0, 64))), 8);                                   // 2.0**64
    EXPECT_EQ(h(nv(std::ldexp(1.0, 100))), 549755813888);                      // 2.0**100
    const char* three200 =
        "265613988875874769338781322035779626829233452653394495974574961739092490901302182994384699044001";
    EXPECT_EQ(h(big(three200)), 424410663027747676);                            // 3**200
    EXPECT_EQ(h(big((std::string("-") + three200).c_str())), -424410663027747676);
    EXPECT_EQ(h(big("4899713275190397669029489447304581663667417819903890594321288586659071337947513719426111599"
                    "819807595088417564655616")),
              1089442295008287457);  // 3**200 * 2**64
    EXPECT_EQ(h(nv(std::int64_t(9007199254740993))), 9007199254740993);          // 2**53 + 1
    EXPECT_EQ(h(big("1000000000000000000000000000000")), 465258685558744706);    // 10**30
    EXPECT_EQ(h(big("-1000000000000000000000000000000")), -465258685558744706);
    EXPECT_EQ(h(nv(true)), 1);
    EXPECT_EQ(h(nv(false)), 0);
}

TEST_F(Neutral, NumericEqualityAcrossKinds) {
    expect_same_key(nv(1), nv(1.0));
    expect_same_key(nv(1), nv(true));
    expect_same_key(nv(1.0), nv(true));
    expect_same_key(nv(0), nv(false));
    expect_same_key(nv(0), nv(0.0));
    expect_same_key(nv(0), nv(-0.0));
    expect_same_key(nv(0.0), nv(-0.0));
    expect_same_key(nv(false), nv(-0.0));
    expect_different(nv(true), nv(false));
    expect_different(nv(true), nv(2));
    expect_different(nv(1), nv(1.5));
    expect_different(nv(0), nv(1e-300));
    // Ints compare exactly with floats: float(2**53 + 1) is 2**53.
    const std::int64_t two53 = std::int64_t(1) << 53;
    expect_different(nv(two53 + 1), nv(static_cast<double>(two53 + 1)));
    expect_same_key(nv(two53), nv(static_cast<double>(two53 + 1)));
    expect_same_key(nv(std::numeric_limits<std::int64_t>::min()), nv(-9223372036854775808.0));
    // 2**63 - 1 rounds to 2.0**63, which is a big int.
    expect_different(nv(std::numeric_limits<std::int64_t>::max()), nv(9223372036854775808.0));
    expect_same_key(big("9223372036854775808"), nv(9223372036854775808.0));
    expect_same_key(big("18446744073709551616"), nv(std::ldexp(1.0, 64)));
    expect_different(big("18446744073709551617"), nv(std::ldexp(1.0, 64)));
    expect_same_key(big("1267650600228229401496703205376"), nv(std::ldexp(1.0, 100)));
    expect_same_key(big("-1267650600228229401496703205376"), nv(-std::ldexp(1.0, 100)));
    expect_different(big("1267650600228229401496703205376"), nv(-std::ldexp(1.0, 100)));
    // int(1e300) is exactly the double 1e300.
    expect_same_key(
        big("1000000000000000052504760255204420248704468581108159154915854115511802457988908195786371375080447864043704"
            "4438328838781769425232353604305756447921847867069828483872009265758037378302337947880900593689532349707"
            "99945081119038967640880074652742780142494579258788820056842838115669472196386865459400540160"),
        nv(1e300));
    expect_different(big("1000000000000000000000000000000"), nv(1e30));  // 1e30 != 10**30
    // Big ints are canonical: values in the int64 range are small.
    EXPECT_TRUE(big("9223372036854775807").is_small_int());
    EXPECT_TRUE(big("-9223372036854775808").is_small_int());
    EXPECT_TRUE(big("-9223372036854775809").is_big_int());
    EXPECT_TRUE(nv(std::uint64_t(1) << 63).is_big_int());
    expect_same_key(nv(std::uint64_t(1) << 63), big("9223372036854775808"));
    expect_same_key(big("-0"), nv(0));
    expect_different(big("18446744073709551616"), big("-18446744073709551616"));
}

TEST_F(Neutral, InfinityAndNaN) {
    const double inf = std::numeric_limits<double>::infinity();
    const double nan = std::numeric_limits<double>::quiet_NaN();
    expect_same_key(nv(inf), nv(inf));
    expect_different(nv(inf), nv(-inf));
    expect_different(nv(inf), big("1000000000000000000000000000000"));
    expect_different(nv(inf), nv(std::numeric_limits<std::int64_t>::max()));
    // Documented choice: every NaN equals every NaN (reflexive keys), hash 0; NaN equals no number.
    expect_same_key(nv(nan), nv(nan));
    expect_same_key(nv(nan), nv(-nan));
    expect_different(nv(nan), nv(0));
    expect_different(nv(nan), nv(0.0));
    expect_different(nv(nan), nv(false));
    expect_different(nv(nan), nv(inf));
    shared_map m;
    m = m.set(nan, 1).set(std::nan("1"), 2);
    EXPECT_EQ(m.size(), 1u);
    ASSERT_NE(m.find(nan), nullptr);
    EXPECT_EQ(*m.find(nan), nv(2));
    EXPECT_EQ(nv(nan).repr(), "nan");
    EXPECT_EQ(nv(-inf).repr(), "-inf");
}

TEST_F(Neutral, Strings) {
    const nv ascii("hello");
    EXPECT_TRUE(ascii.is_str());
    EXPECT_EQ(ascii.str_view(), "hello");
    EXPECT_EQ(ascii.str_length(), 5u);
    EXPECT_TRUE(ascii.str_is_ascii());
    EXPECT_EQ(ascii.str_view().data()[5], '\0');
    expect_same_key(ascii, nv(std::string("hel") + "lo"));
    expect_different(ascii, nv("hellO"));
    expect_different(ascii, nv("hell"));
    // é (2 bytes), € (3 bytes), 😀 (4 bytes): code points, maximum code point.
    const nv latin1("caf\xC3\xA9");
    EXPECT_EQ(latin1.str_length(), 4u);
    EXPECT_EQ(latin1.str_max_char(), 0xE9u);
    EXPECT_FALSE(latin1.str_is_ascii());
    const nv bmp("\xE2\x82\xAC 5");
    EXPECT_EQ(bmp.str_length(), 3u);
    EXPECT_EQ(bmp.str_max_char(), 0x20ACu);
    const nv astral("a\xF0\x9F\x98\x80");
    EXPECT_EQ(astral.str_length(), 2u);
    EXPECT_EQ(astral.str_max_char(), 0x1F600u);
    EXPECT_EQ(astral.str_view().size(), 5u);
    expect_same_key(astral, nv("a\xF0\x9F\x98\x80"));
    expect_different(astral, nv("a\xF0\x9F\x98\x81"));
    // A lone surrogate, as "surrogatepass" encodes it.
    const nv surrogate("\xED\xA0\x80");
    EXPECT_EQ(surrogate.str_length(), 1u);
    EXPECT_EQ(surrogate.str_max_char(), 0xD800u);
    // Invalid UTF-8 is rejected.
    EXPECT_THROW(nv("\xC0\x80"), std::invalid_argument);          // overlong NUL
    EXPECT_THROW(nv("\xE0\x80\x80"), std::invalid_argument);      // overlong
    EXPECT_THROW(nv("\xF4\x90\x80\x80"), std::invalid_argument);  // above U+10FFFF
    EXPECT_THROW(nv("\xFF"), std::invalid_argument);
    EXPECT_THROW(nv("\xE2\x82"), std::invalid_argument);          // truncated
    EXPECT_THROW(nv("a\x80"), std::invalid_argument);             // stray continuation
    // Embedded NULs are content.
    const nv with_nul(std::string_view("a\0b", 3));
    EXPECT_EQ(with_nul.str_length(), 3u);
    expect_different(with_nul, nv("a"));
    // The binding's trusted constructor gives the same value.
    expect_same_key(nv::str_unchecked("caf\xC3\xA9", 4, 0xE9), latin1);
    EXPECT_EQ(nv("it's").repr(), "'it\\'s'");
    const nv empty("");
    EXPECT_EQ(empty.str_length(), 0u);
    expect_same_key(empty, nv(std::string()));
}

// The str hash a binding computes from a Python str's UTF-8 in place (str_hash_of) is the hash
// of the built value, for every length around the hash's 16-byte steps; and its overlapping
// word loads give what reading each byte once does (hashes are fixed across builds).
TEST_F(Neutral, StrHashOfMatchesBuiltStrsAndTheBytewiseTail) {
    using namespace pypersistent::neutral_detail;
    auto bytewise_hash = [](const unsigned char* p, std::size_t n, std::uint64_t seed) {
        constexpr std::uint64_t k1 = 0xA0761D6478BD642Full, k2 = 0xE7037ED1A0B428DBull, k3 = 0x8EBC6AF09C88C6E3ull;
        // The little-endian number of the bytes [from, from + count) of the string.
        auto word = [p](std::size_t from, std::size_t count) {
            std::uint64_t w = 0;
            for (std::size_t i = 0; i < count; ++i) w |= static_cast<std::uint64_t>(p[from + i]) << (8 * i);
            return w;
        };
        std::uint64_t h = seed, a, b;
        std::size_t at = 0, left = n;
        while (left > 16) {
            h = folded_multiply(word(at, 8) ^ k1, word(at + 8, 8) ^ h);
            at += 16;
            left -= 16;
        }
        if (n > 16) {
            a = word(n - 16, 8);
            b = word(n - 8, 8);
        } else if (n >= 8) {
            a = word(0, 8);
            b = word(n - 8, 8);
        } else {
            a = word(0, n);
            b = 0;
        }
        const wide_product m = multiply_wide(a ^ k1, b ^ h);
        return folded_multiply(m.low ^ k2 ^ n, m.high ^ k3);
    };
    std::string s;
    for (std::size_t n = 0; n <= 72; ++n) {
        const auto* p = reinterpret_cast<const unsigned char*>(s.data());
        EXPECT_EQ(nv::str_hash_of(s), nv(s).hash()) << n;
        EXPECT_EQ(nv(s).str_hash(), nv(s).hash()) << n;
        EXPECT_EQ(hash_bytes(p, n, str_seed), bytewise_hash(p, n, str_seed)) << n;
        s.push_back(static_cast<char>('a' + (n * 7) % 26));
    }
    const std::string high = "\xff\x80\xfe\x01\x7f";  // bytes with the top bit set, in the tail
    for (std::size_t n = 0; n <= high.size(); ++n) {
        const auto* p = reinterpret_cast<const unsigned char*>(high.data());
        EXPECT_EQ(hash_bytes(p, n, bytes_seed), bytewise_hash(p, n, bytes_seed)) << n;
    }
}

// The hashes are all distinct, and the trie's fragments at shifts 0, 5 and 60 (the last level
// sees the top 4 bits) are each used within 5% of evenly.
void expect_distinct_and_even(const std::vector<std::uint64_t>& hashes) {
    std::vector<std::uint64_t> sorted = hashes;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end()) << "two strs share a hash";
    std::vector<int> first(32), second(32), last(16);
    for (const std::uint64_t h : hashes) {
        ++first[h & 31];
        ++second[(h >> 5) & 31];
        ++last[h >> 60];
    }
    const double expected = static_cast<double>(hashes.size()) / 32;
    for (int f = 0; f < 32; ++f) {
        EXPECT_NEAR(first[f], expected, expected * 0.05) << f;
        EXPECT_NEAR(second[f], expected, expected * 0.05) << f;
    }
    for (int f = 0; f < 16; ++f) EXPECT_NEAR(last[f], 2 * expected, 2 * expected * 0.05) << f;
}

// Short strs hash by their two words (short_str_hash): the same hash whatever form the caller
// holds the characters in (str_hash_of of the UTF-8, the value, its words), and hashes that
// spread: keys differing only in a late character, or only in their length (trailing NULs),
// get distinct hashes, and the trie's fragments are all used evenly.
TEST_F(Neutral, ShortStrHashesAgreeAndSpread) {
    std::uint64_t words[2];
    std::vector<std::uint64_t> hashes;
    auto add = [&](const std::string& s) {
        ASSERT_LE(s.size(), nv::short_str_capacity);
        const nv v(s);
        ASSERT_TRUE(v.is_short_str());
        nv::short_str_words(s.data(), s.size(), words);
        EXPECT_EQ(nv::short_str_hash_of(words), v.hash()) << s;
        EXPECT_EQ(nv::str_hash_of(s), v.hash()) << s;
        hashes.push_back(v.hash());
    };
    std::set<std::string> strs;
    for (int i = 0; i < 100000; ++i) {
        std::string late("abcdefghijkl");  // 12 characters, then one that varies with i
        late.append(1, static_cast<char>(i % 128));
        late[6 + (i / 128) % 6] = static_cast<char>('A' + (i / 768) % 26);
        strs.insert(late);
        strs.insert(std::string("k").append(std::to_string(i)));
        strs.insert(std::string("user:").append(std::to_string(i * 7)));
    }
    for (std::size_t n = 0; n <= nv::short_str_capacity; ++n) strs.insert(std::string(n, '\0'));
    for (const std::string& s : strs) add(s);
    expect_distinct_and_even(hashes);
}

// Longer strs (and bytes) hash with hash_bytes: keys that differ in one character anywhere,
// or only in their length (trailing NULs, which overlapping loads read twice), get distinct
// hashes, and every fragment the trie looks at is used evenly: the first two and the last
// levels' (shift 60 sees the top 4 bits).
TEST_F(Neutral, LongStrHashesSpread) {
    std::set<std::string> strs;
    for (int i = 0; i < 100000; ++i) {
        char id[32];
        std::snprintf(id, sizeof id, "customer-%012d", i);  // 21 bytes: a step of 16, then 5
        strs.insert(id);
        std::string one_off(40, 'x');  // 40 bytes: two steps, then 8; one character varies
        one_off[static_cast<std::size_t>(i % 40)] = static_cast<char>(' ' + (i / 40) % 95);
        one_off[static_cast<std::size_t>((i / 3800) % 40)] ^= 0x20;
        strs.insert(one_off);
        strs.insert(std::string("https://example.org/items/").append(std::to_string(i * 13)));
    }
    for (std::size_t n = 14; n <= 80; ++n) strs.insert(std::string(n, '\0'));
    std::vector<std::uint64_t> hashes;
    for (const std::string& s : strs) {
        const nv v(s);
        ASSERT_FALSE(v.is_short_str()) << s;
        EXPECT_EQ(nv::str_hash_of(s), v.hash()) << s;
        hashes.push_back(v.hash());
    }
    expect_distinct_and_even(hashes);
}

TEST_F(Neutral, BytesAreNotStr) {
    const nv b = nv::bytes("abc");
    EXPECT_TRUE(b.is_bytes());
    EXPECT_EQ(b.bytes_view(), "abc");
    expect_different(b, nv("abc"));
    expect_same_key(b, nv::bytes(std::string("abc")));
    expect_different(b, nv::bytes("abd"));
    expect_different(nv::bytes(""), nv(""));
    expect_different(nv::bytes(""), nv());
    const unsigned char raw[] = {0, 0xFF, 0x80};
    const nv binary = nv::bytes(raw, sizeof raw);
    EXPECT_EQ(binary.bytes_view().size(), 3u);
    EXPECT_EQ(binary.repr(), "b'\\x00\\xff\\x80'");
}

TEST_F(Neutral, OtherKindsNeverMeet) {
    const std::vector<nv> values{nv(), nv(0), nv(""), nv::bytes(""), nv::tuple({}), nv(shared_map())};
    for (std::size_t i = 0; i < values.size(); ++i) {
        for (std::size_t j = 0; j < values.size(); ++j) {
            if (i == j) {
                expect_same_key(values[i], values[j]);
            } else {
                expect_different(values[i], values[j]);
            }
        }
    }
}

TEST_F(Neutral, Tuples) {
    const nv t = nv::tuple({1, 2.5, "x", nv::tuple({true, nv()})});
    EXPECT_EQ(t.tuple_size(), 4u);
    EXPECT_EQ(t[1], nv(2.5));
    EXPECT_EQ(t.repr(), "(1, 2.5, 'x', (True, None))");
    expect_same_key(t, nv::tuple({1.0, 2.5, "x", nv::tuple({1, nv()})}));
    expect_same_key(nv::tuple({1}), nv::tuple({1.0}));
    expect_same_key(nv::tuple({1}), nv::tuple({true}));
    expect_same_key(nv::tuple({0, -0.0}), nv::tuple({false, 0}));
    expect_different(nv::tuple({1}), nv::tuple({1, 1}));
    expect_different(nv::tuple({1, 2}), nv::tuple({2, 1}));
    expect_different(nv::tuple({"a"}), nv::tuple({nv::bytes("a")}));
    expect_different(nv::tuple({}), nv());
    EXPECT_EQ(nv::tuple({1}).repr(), "(1,)");
    expect_same_key(nv::tuple({big("18446744073709551616")}), nv::tuple({std::ldexp(1.0, 64)}));
    // Deep nesting.
    nv deep = nv::tuple({0});
    nv deep2 = nv::tuple({0.0});
    for (int i = 0; i < 100; ++i) {
        deep = nv::tuple({deep, i});
        deep2 = nv::tuple({deep2, static_cast<double>(i)});
    }
    expect_same_key(deep, deep2);
    // Elements are shared, not copied.
    const nv s("a string longer than a short str");
    {
        const nv holder = nv::tuple({s, s});
        EXPECT_EQ(s.use_count(), 3u);
        EXPECT_TRUE(holder[0].identical(s));
    }
    EXPECT_EQ(s.use_count(), 1u);
}

TEST_F(Neutral, NestedMaps) {
    const nv a(shared_map{{"k", 1}, {2, "two"}});
    const nv b(shared_map{{2.0, "two"}, {"k", true}});
    expect_same_key(a, b);
    expect_different(a, nv(shared_map{{"k", 1}}));
    expect_different(a, nv(shared_map{{"k", 2}, {2, "two"}}));
    expect_same_key(nv(shared_map()), nv(shared_map()));
    EXPECT_TRUE(a.is_map());
    EXPECT_EQ(a.as_map().size(), 2u);
    // Maps as keys, and in tuples.
    shared_map outer;
    outer = outer.set(a, "first").set(b, "second");
    EXPECT_EQ(outer.size(), 1u);
    EXPECT_EQ(*outer.find(a), nv("second"));
    EXPECT_TRUE(outer.begin()->first.identical(a));  // the first key stays, as in dict
    expect_same_key(nv::tuple({a, 1}), nv::tuple({b, 1.0}));
    // Map inside map inside map.
    const nv deep(shared_map{{"x", shared_map{{"y", shared_map{{"z", 1}}}}}});
    const nv deep2(shared_map{{"x", shared_map{{"y", shared_map{{"z", 1.0}}}}}});
    expect_same_key(deep, deep2);
    EXPECT_EQ(deep.repr(), "{'x': {'y': {'z': 1}}}");
}

// ASCII strs of up to short_str_capacity bytes live inside the value (no block); longer or
// non-ASCII ones in a block. The two forms never mix for the same content (canonical), and the
// accessors answer alike for both.
TEST_F(Neutral, ShortStrsLiveInsideTheValue) {
    const std::int64_t before = live();
    const std::string thirteen(nv::short_str_capacity, 'q');
    const std::string fourteen(nv::short_str_capacity + 1, 'q');
    const nv empty(""), one("k"), full(thirteen), over(fourteen), accented("\xC3\xA9");
    EXPECT_EQ(live(), before + 2);  // only `over` and `accented` have blocks
    for (const nv* v : {&empty, &one, &full}) {
        EXPECT_TRUE(v->is_short_str());
        EXPECT_TRUE(v->is_str());
        EXPECT_FALSE(v->is_heap());
        EXPECT_EQ(v->type(), nv::kind::str);
        EXPECT_EQ(v->use_count(), 1u);
        EXPECT_TRUE(v->str_is_ascii());
        EXPECT_EQ(v->str_view().data()[v->str_view().size()], '\0');  // NUL-terminated, as in a block
        EXPECT_EQ(v->str_length(), v->str_view().size());
        EXPECT_EQ(v->hash(), nv::str_hash_of(v->str_view()));
        EXPECT_EQ(v->str_hash(), v->hash());
    }
    for (const nv* v : {&over, &accented}) {
        EXPECT_TRUE(v->is_block_str());
        EXPECT_FALSE(v->is_short_str());
        EXPECT_EQ(v->type(), nv::kind::str);
    }
    EXPECT_EQ(full.str_view(), thirteen);
    // A lookup's probe words are the stored value's words, for every length.
    for (std::size_t n = 0; n <= nv::short_str_capacity; ++n) {
        const std::string text = std::string("abcdefghijklmnop").substr(0, n);
        std::uint64_t words[2];
        nv::short_str_words(text.data(), n, words);
        const nv stored(text);
        EXPECT_EQ(words[0], stored.word(0)) << n;
        EXPECT_EQ(words[1], stored.word(1)) << n;
        nv::short_str_words("abcdefghijklmnopz", n, words);  // what follows is not read
        EXPECT_EQ(words[1], stored.word(1)) << n;
        // From a buffer of exactly n bytes (a heap block under ASan): the words are read from
        // loads inside the characters, never past them.
        const std::unique_ptr<char[]> exact(new char[n == 0 ? 1 : n]);
        std::memcpy(exact.get(), text.data(), n);
        nv::short_str_words(exact.get(), n, words);
        EXPECT_EQ(words[0], stored.word(0)) << n;
        EXPECT_EQ(words[1], stored.word(1)) << n;
    }
    EXPECT_EQ(one.str_max_char(), std::uint32_t('k'));
    EXPECT_EQ(empty.str_max_char(), 0u);
    EXPECT_FALSE(accented.str_is_ascii());
    // Canonical whatever the caller's bound on the code points says.
    const nv loose = nv::str_unchecked("abc", 3, 0x10FFFF);
    EXPECT_TRUE(loose.is_short_str());
    expect_same_key(loose, nv("abc"));
    EXPECT_TRUE(loose.identical(nv("abc")));
    expect_different(nv("abc"), nv("abd"));
    expect_different(nv("abc"), nv("abc "));
    expect_different(nv("abc"), nv::bytes("abc"));
    expect_different(nv(""), nv());
    expect_different(full, over);
    expect_different(nv("1"), nv(1));
    EXPECT_EQ(nv("it's\n").repr(), "'it\\'s\\x0a'");
    // Copies, moves and swaps carry the characters.
    nv a(thirteen);
    nv b = a;
    EXPECT_TRUE(b.identical(a));
    nv c = std::move(b);
    EXPECT_TRUE(b.is_none());  // NOLINT(bugprone-use-after-move): moved-from is None
    EXPECT_TRUE(b.identical(nv()));
    EXPECT_EQ(c.str_view(), thirteen);
    nv d(fourteen);
    c.swap(d);
    EXPECT_EQ(c.str_view(), fourteen);
    EXPECT_EQ(d.str_view(), thirteen);
    EXPECT_TRUE(d.is_short_str());
    // As keys and values of a map, next to block strs and other kinds.
    shared_map m;
    for (int i = 0; i < 2000; ++i) {
        const std::string k = std::string("k").append(std::to_string(i));  // not "k" + ...: GCC 12 -Wrestrict false positive at -O3
        m = m.set(k, k).set(k + "-and-a-long-tail", i);
    }
    EXPECT_EQ(m.size(), 4000u);
    for (int i = 0; i < 2000; i += 7) {
        const std::string k = std::string("k").append(std::to_string(i));  // not "k" + ...: GCC 12 -Wrestrict false positive at -O3
        ASSERT_NE(m.find(k), nullptr);
        EXPECT_EQ(m.find(k)->str_view(), k);
        EXPECT_EQ(*m.find(k + "-and-a-long-tail"), nv(i));
        EXPECT_EQ(m.find(nv::bytes(k)), nullptr);
    }
    EXPECT_EQ(m.erase("k5").size(), 3999u);
}

TEST_F(Neutral, IdenticalIsCheaperThanEqual) {
    EXPECT_TRUE(nv(1).identical(nv(1)));
    EXPECT_FALSE(nv(1).identical(nv(1.0)));
    EXPECT_FALSE(nv(0.0).identical(nv(-0.0)));
    const nv s("a string in a block");
    const nv copy = s;
    EXPECT_TRUE(s.identical(copy));
    EXPECT_FALSE(s.identical(nv("a string in a block")));  // equal, but another block
    // Short strs have no block: equal ones are identical.
    EXPECT_TRUE(nv("abc").identical(nv("abc")));
    EXPECT_FALSE(nv("abc").identical(nv("abd")));
}

TEST_F(Neutral, LittleEndianBytes) {
    struct sample {
        const char* decimal;
        const char* hex;  // python3: v.to_bytes(n, 'little', signed=True).hex()
    };
    const sample samples[] = {
        {"-1267650600228229401496703205376", "000000000000000000000000f0"},
        {"9223372036854775808", "000000000000008000"},
        {"-9223372036854775809", "ffffffffffffff7fff"},
        {"18446744073709551615", "ffffffffffffffff00"},
        {"-1", "ff"},
        {"255", "ff00"},
        {"-128", "80"},
        {"-129", "7fff"},
        {"0", "00"},
    };
    for (const auto& s : samples) {
        const nv v = big(s.decimal);
        const std::string hex(s.hex);
        const std::size_t n = hex.size() / 2;
        EXPECT_EQ(v.le_byte_length(), n) << s.decimal;
        std::vector<unsigned char> out(n);
        ASSERT_TRUE(v.to_le_bytes(out.data(), n));
        std::string got;
        for (unsigned char c : out) {
            char buf[3];
            std::snprintf(buf, sizeof buf, "%02x", c);
            got += buf;
        }
        EXPECT_EQ(got, hex) << s.decimal;
        EXPECT_FALSE(v.to_le_bytes(out.data(), n - 1)) << s.decimal;
        const nv back = nv::from_le_bytes(out.data(), n, true);
        EXPECT_EQ(back, v) << s.decimal;
        EXPECT_EQ(back.repr(), std::string(s.decimal)) << s.decimal;
        // Sign-extended to more bytes: the same value.
        std::vector<unsigned char> wide(n + 5);
        ASSERT_TRUE(v.to_le_bytes(wide.data(), wide.size()));
        EXPECT_EQ(nv::from_le_bytes(wide.data(), wide.size(), true), v) << s.decimal;
    }
    const unsigned char all_ones[] = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
    EXPECT_EQ(nv::from_le_bytes(all_ones, 9, false).repr(), "4722366482869645213695");  // 2**72 - 1
    EXPECT_EQ(nv::from_le_bytes(all_ones, 9, true), nv(-1));
}

TEST_F(Neutral, DecimalRoundTrip) {
    const char* samples[] = {"0", "1", "-1", "9223372036854775807", "-9223372036854775808", "9223372036854775808",
                             "-9223372036854775809", "340282366920938463463374607431768211456",
                             "-123456789012345678901234567890123456789012345678901234567890"};
    for (const char* s : samples) EXPECT_EQ(big(s).repr(), s);
    EXPECT_EQ(big("1_000_000").repr(), "1000000");
    EXPECT_EQ(big("+42").repr(), "42");
    EXPECT_THROW(big(""), std::invalid_argument);
    EXPECT_THROW(big("-"), std::invalid_argument);
    EXPECT_THROW(big("12a"), std::invalid_argument);
    EXPECT_THROW(big("1__0"), std::invalid_argument);
    EXPECT_THROW(big("10_"), std::invalid_argument);
}

TEST_F(Neutral, FloatRepr) {
    EXPECT_EQ(nv(1.5).repr(), "1.5");
    EXPECT_EQ(nv(2.0).repr(), "2.0");
    EXPECT_EQ(nv(0.1).repr(), "0.1");
    EXPECT_EQ(nv(-0.0).repr(), "-0.0");
    EXPECT_EQ(nv(1e300).repr(), "1e+300");
}

// Constructors that end in a heap value must not assign over uninitialized bits (ASan fills
// fresh heap memory with garbage, so a vector's elements catch it).
TEST_F(Neutral, ConstructionIntoFreshMemory) {
    std::vector<nv> v;
    v.reserve(8);
    v.emplace_back(std::uint64_t(1) << 63);
    v.emplace_back(~std::uint64_t(0));
    v.emplace_back("text");
    v.emplace_back(shared_map{{1, 2}});
    v.emplace_back(std::string_view("view"));
    EXPECT_TRUE(v[0].is_big_int());
    EXPECT_EQ(v[1].repr(), "18446744073709551615");
    EXPECT_EQ(v[2], nv("text"));
    EXPECT_TRUE(v[3].is_map());
    EXPECT_EQ(v[4].str_length(), 4u);
}

TEST_F(Neutral, CopyMoveAndCounts) {
    nv a("a payload in a block");
    EXPECT_EQ(a.use_count(), 1u);
    nv b = a;
    EXPECT_EQ(a.use_count(), 2u);
    nv c = std::move(b);
    EXPECT_TRUE(b.is_none());  // NOLINT(bugprone-use-after-move): moved-from is None
    EXPECT_EQ(a.use_count(), 2u);
    c = nv(3);
    EXPECT_EQ(a.use_count(), 1u);
    c = a;
    const nv& alias = c;
    c = alias;  // self-assignment
    EXPECT_EQ(a.use_count(), 2u);
    a.swap(c);
    EXPECT_EQ(a.use_count(), 2u);
    std::vector<nv> many(100, a);
    EXPECT_EQ(a.use_count(), 102u);
    many.clear();
    EXPECT_EQ(a.use_count(), 2u);
}


// ---- deep nesting (see "Nesting" in neutral_value.hpp) ----------------------------------------

// A chain of `depth` one-entry maps, {"x": {"x": ... {} ...}}.
nv map_chain(std::size_t depth) {
    nv m{shared_map()};
    for (std::size_t i = 0; i < depth; ++i) m = nv{shared_map().set(nv("x"), m)};
    return m;
}
nv tuple_chain(std::size_t depth) {
    nv t = nv::tuple({});
    for (std::size_t i = 0; i < depth; ++i) t = nv::tuple({t, nv(std::int64_t(i))});
    return t;
}

TEST_F(Neutral, DeepChainsFreeWithoutRecursion) {
    // Dropping the last reference to a 300,000-deep chain overflowed the stack before the
    // destruction queue (one C++ frame chain per level).
    { nv chain = map_chain(300000); }
    { nv chain = tuple_chain(300000); }
    {
        // Mixed, and held by a map that dies through its own erase.
        nv m = map_chain(100000);
        nv t = nv::tuple({m, tuple_chain(100000)});
        shared_map holder = shared_map().set(nv(1), t).set(nv(2), m);
        m = nv();
        t = nv();
        holder = holder.erase(nv(1)).erase(nv(2));
    }
}

TEST_F(Neutral, DeepChainsCompareHashAndPrintUpToTheLimit) {
    const std::size_t limit = pypersistent::neutral_detail::max_nesting_depth;
    const nv a = map_chain(limit - 1), b = map_chain(limit - 1);  // distinct blocks, equal content
    EXPECT_TRUE(a == b);
    EXPECT_EQ(a.hash(), b.hash());
    EXPECT_EQ(a.repr().size(), b.repr().size());
    const nv t = tuple_chain(limit - 1), u = tuple_chain(limit - 1);
    EXPECT_TRUE(t == u);
    EXPECT_EQ(t.hash(), u.hash());
}

TEST_F(Neutral, TooDeepChainsThrowAndLeaveNoState) {
    using pypersistent::neutral_nesting_error;
    const nv a = map_chain(300000), b = map_chain(300000);
    EXPECT_THROW((void)(a == b), neutral_nesting_error);
    EXPECT_THROW((void)a.hash(), neutral_nesting_error);
    EXPECT_THROW((void)a.repr(), neutral_nesting_error);
    const nv t = tuple_chain(300000), u = tuple_chain(300000);
    EXPECT_THROW((void)(t == u), neutral_nesting_error);
    EXPECT_THROW((void)t.hash(), neutral_nesting_error);
    // As a key: inserting hashes it; the map is unchanged.
    const shared_map m = shared_map().set(nv(1), nv(2));
    EXPECT_THROW((void)m.set(a, nv(0)), neutral_nesting_error);
    EXPECT_EQ(m.size(), 1u);
    // The depth count unwound: shallow values still compare and hash.
    EXPECT_EQ(pypersistent::neutral_detail::nesting_depth, 0);
    EXPECT_TRUE(map_chain(10) == map_chain(10));
    EXPECT_EQ(tuple_chain(10).hash(), tuple_chain(10).hash());
    // Identical blocks compare equal at any depth without recursing.
    EXPECT_TRUE(a == a);
}

}  // namespace
