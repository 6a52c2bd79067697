// numa.h: which NUMA nodes a set of CPUs sits on, and a thread's memory placed on them.
//
// A pinned ThreadPool (thread-pool.h) calls prefer_memory_near() for its CPUs before it starts its
// helpers, so that on a machine of several nodes what an engine (or a tensor-parallel rank)
// allocates and first touches after that (its prepared weights, its scratch; the helpers and the
// weight-packing threads inherit the policy) lies on the node of the cores that read it.
// Stays true: on one node, or CPUs that span every node, nothing is changed; the policy is
// "preferred", never "bind", so a full node spills to the others instead of failing.
#pragma once

#include <string>
#include <vector>

namespace llm::cpu {

// "0-3,8,10-11" -> {0, 1, 2, 3, 8, 10, 11}; empty for text it cannot read.
std::vector<int> parse_cpu_list(const std::string& text);

// The nodes (ascending) under root (a sysfs node directory, node<N>/cpulist each) that hold any of
// cpus; empty where root has no such entries.
std::vector<int> numa_nodes_of(const std::vector<int>& cpus, const std::string& root = "/sys/devices/system/node");

// How many nodes root lists (0 where it cannot be read).
int numa_node_count(const std::string& root = "/sys/devices/system/node");

// Sets the calling thread's memory policy to prefer the nodes of cpus, where the machine has
// several nodes and cpus do not span them all. Returns those nodes, or empty (nothing changed:
// one node, every node, or the kernel refused).
std::vector<int> prefer_memory_near(const std::vector<int>& cpus);

}  // namespace llm::cpu
