// A TensorBoard Event record decoded by protobuf's own parser (tests/event.proto), behind
// a plain interface: the decoder is compiled without LibTorch's include path, whose bundled
// copy of protobuf's headers would otherwise shadow the system protobuf the code was
// generated for.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace dms::test {

struct TbEvent {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;                            // set on the first record only
  std::vector<std::pair<std::string, float>> scalars;  // (tag, simple_value) in file order
};

// false when bytes are not a valid Event message.
bool parse_tb_event(const std::string& bytes, TbEvent& out);

}  // namespace dms::test
