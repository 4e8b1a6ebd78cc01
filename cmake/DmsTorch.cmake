# Finds LibTorch: Debian's libtorch-dev (1.13, CPU) by default, or PyTorch's own LibTorch
# 2.x (the pip wheel, CUDA) given through
#   -DCMAKE_PREFIX_PATH=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
# and sets DMS_WITH_CUDA. Works around what Torch's CMake config gets wrong when both are
# installed, and keeps its configure step from probing for a GPU.

# Torch's config finds c10, torch and kineto with find_library(... PATHS <its prefix>/lib),
# which searches the system directories before PATHS: with Debian's libtorch-dev also
# installed, a 2.x build would link Debian's libc10.so next to the wheel's libtorch (and
# crash at load time). Searching the LibTorch's own root first fixes that; the check after
# find_package makes any other mix-up a configure error.
function(dms_torch_roots out)
  set(roots "")
  foreach(p IN LISTS CMAKE_PREFIX_PATH Torch_DIR)
    foreach(cfg "${p}/Torch/TorchConfig.cmake" "${p}/share/cmake/Torch/TorchConfig.cmake"
                "${p}/TorchConfig.cmake")
      if(EXISTS "${cfg}")
        get_filename_component(root "${cfg}/../../../.." ABSOLUTE)
        list(APPEND roots "${root}")
      endif()
    endforeach()
  endforeach()
  set(${out} ${roots} PARENT_SCOPE)
endfunction()
dms_torch_roots(DMS_TORCH_ROOTS)
# Only while Torch is found: the wheel also carries protoc and protobuf headers of its own,
# which must not replace the system ones for our other packages.
set(dms_saved_prefix_path "${CMAKE_PREFIX_PATH}")
list(PREPEND CMAKE_PREFIX_PATH ${DMS_TORCH_ROOTS})
# The wheel links Kineto (the profiler) into libtorch_cpu.so and ships no libkineto.a, so the
# config's lookup of the latter only prints a misleading "library kineto not found".
foreach(root IN LISTS DMS_TORCH_ROOTS)
  if(EXISTS "${root}/lib/libtorch_cpu.so" AND NOT EXISTS "${root}/lib/libkineto.a")
    set(kineto_LIBRARY "${root}/lib/libtorch_cpu.so" CACHE FILEPATH "Kineto (inside libtorch_cpu)")
  endif()
endforeach()

# A CUDA LibTorch enables CMake's CUDA language: find nvcc where the toolkit usually lives
# when it is not on PATH.
if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
  find_program(DMS_NVCC nvcc HINTS ENV CUDA_HOME ENV CUDA_PATH /usr/local/cuda PATH_SUFFIXES bin)
  if(DMS_NVCC)
    set(CMAKE_CUDA_COMPILER "${DMS_NVCC}")
  endif()
endif()
# We compile no CUDA sources, so the architecture list only feeds nvcc flags nobody uses;
# fixing it skips Torch's configure-time GPU probe (a CUDA program compiled and run) and
# its warning on machines without a GPU. TORCH_CUDA_ARCH_LIST (variable or environment)
# still wins.
if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(TORCH_CUDA_ARCH_LIST "9.0")
endif()
# CMake >= 3.18 would initialise CMAKE_CUDA_ARCHITECTURES when Torch enables CUDA, and Torch
# then warns that it ignores it; with the old behaviour it stays unset (no CUDA targets here).
if(POLICY CMP0104)
  cmake_policy(SET CMP0104 OLD)
endif()

find_package(Torch REQUIRED)
set(CMAKE_PREFIX_PATH "${dms_saved_prefix_path}")

# Every Torch library must come from the LibTorch whose config we read.
get_filename_component(DMS_TORCH_PREFIX "${TORCH_INSTALL_PREFIX}" REALPATH)
foreach(lib TORCH_LIBRARY c10_LIBRARY C10_CUDA_LIBRARY)
  if(${lib})
    get_filename_component(real "${${lib}}" REALPATH)
    string(FIND "${real}" "${DMS_TORCH_PREFIX}/" at)
    if(NOT at EQUAL 0)
      message(FATAL_ERROR "dms: ${lib} is ${real}, outside the LibTorch at ${DMS_TORCH_PREFIX} "
                          "(two LibTorch installs mixed): clear it with -U${lib} or a fresh build dir")
    endif()
  endif()
endforeach()

# Our other C++ dependencies (Debian's GoogleTest, protobuf, SentencePiece) use the C++11
# ABI of libstdc++; a LibTorch built with the old one cannot link with them.
if(TORCH_CXX_FLAGS MATCHES "_GLIBCXX_USE_CXX11_ABI=0")
  message(FATAL_ERROR "dms: this LibTorch (${DMS_TORCH_PREFIX}) uses the pre-C++11 libstdc++ ABI "
                      "(${TORCH_CXX_FLAGS}); use a cxx11-ABI build (every PyTorch wheel since 2.7)")
endif()

# CUDA-only code (NCCL process groups, device checks) compiles only when the Torch we
# found was built with CUDA.
if(TORCH_CUDA_LIBRARIES OR CUDA_FOUND)
  set(DMS_WITH_CUDA ON)
  set(dms_cuda_note " (toolkit ${CUDA_VERSION}, ${CMAKE_CUDA_COMPILER})")
else()
  set(DMS_WITH_CUDA OFF)
  set(dms_cuda_note "")
endif()
# Recorded for scripts (scripts/build_torch2.sh checks that its build has CUDA).
set(DMS_WITH_CUDA ${DMS_WITH_CUDA} CACHE INTERNAL "LibTorch has CUDA")
message(STATUS "dms: Torch ${Torch_VERSION} at ${DMS_TORCH_PREFIX}, CUDA: ${DMS_WITH_CUDA}${dms_cuda_note}")
