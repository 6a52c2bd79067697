// numa.cc: see numa.h.
#include "numa.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace llm::cpu {

namespace {

constexpr int kMpolPreferred = 1;      // <linux/mempolicy.h> MPOL_PREFERRED
constexpr int kMpolPreferredMany = 5;  // MPOL_PREFERRED_MANY (Linux 5.15)

using NodeTable = std::vector<std::pair<int, std::vector<int>>>;

// node<N> entries of root, with their CPUs, by node.
NodeTable read_nodes(const std::string& root) {
  NodeTable nodes;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("node", 0) != 0 || name.size() == 4 || name.find_first_not_of("0123456789", 4) != std::string::npos) continue;
    std::ifstream in(entry.path() / "cpulist");
    std::string text;
    std::getline(in, text);
    nodes.emplace_back(std::atoi(name.c_str() + 4), parse_cpu_list(text));
  }
  std::sort(nodes.begin(), nodes.end());
  return nodes;
}

// The nodes of table that hold any of cpus.
std::vector<int> nodes_holding(const NodeTable& table, const std::vector<int>& cpus) {
  std::vector<int> out;
  for (const auto& [node, node_cpus] : table)
    if (std::any_of(cpus.begin(), cpus.end(), [&](int c) { return std::find(node_cpus.begin(), node_cpus.end(), c) != node_cpus.end(); }))
      out.push_back(node);
  return out;
}

}  // namespace

std::vector<int> parse_cpu_list(const std::string& text) {
  std::vector<int> cpus;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, ',')) {
    if (part.empty() || part.find_first_not_of("0123456789-\n ") != std::string::npos) return {};
    const size_t dash = part.find('-');
    const int lo = std::atoi(part.c_str()), hi = dash == std::string::npos ? lo : std::atoi(part.c_str() + dash + 1);
    if (hi < lo || hi - lo > 1 << 16) return {};
    for (int c = lo; c <= hi; ++c) cpus.push_back(c);
  }
  return cpus;
}

std::vector<int> numa_nodes_of(const std::vector<int>& cpus, const std::string& root) {
  return nodes_holding(read_nodes(root), cpus);
}

int numa_node_count(const std::string& root) { return static_cast<int>(read_nodes(root).size()); }

std::vector<int> prefer_memory_near(const std::vector<int>& cpus) {
  static const NodeTable table = read_nodes("/sys/devices/system/node");  // fixed while we run
  if (table.size() < 2 || cpus.empty()) return {};
  const std::vector<int> nodes = nodes_holding(table, cpus);
  if (nodes.empty() || nodes.size() == table.size() || nodes.back() >= 1024) return {};
  unsigned long mask[1024 / (8 * sizeof(unsigned long))] = {};
  for (int n : nodes) mask[n / (8 * sizeof(unsigned long))] |= 1ul << (n % (8 * sizeof(unsigned long)));
#if defined(__linux__)
  const int mode = nodes.size() == 1 ? kMpolPreferred : kMpolPreferredMany;
  if (syscall(SYS_set_mempolicy, mode, mask, 1024 + 1) != 0) return {};
  return nodes;
#else
  return {};
#endif
}

}  // namespace llm::cpu
