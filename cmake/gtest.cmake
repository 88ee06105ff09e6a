# GoogleTest for every test folder: the installed package (libgtest-dev) where there is one;
# otherwise sources carried to the machine (the GPU machine has no package: gpu-check.sh
# passes -DGALE_GTEST_SOURCE_DIR=.devcarry/googletest).
find_package(GTest QUIET)
if(NOT TARGET GTest::gtest)
  set(GALE_GTEST_SOURCE_DIR "" CACHE PATH "GoogleTest source tree, used when no GTest package is found")
  if(NOT GALE_GTEST_SOURCE_DIR)
    message(FATAL_ERROR "GoogleTest not found: install libgtest-dev or set GALE_GTEST_SOURCE_DIR")
  endif()
  set(BUILD_GMOCK OFF CACHE BOOL "" FORCE)
  set(INSTALL_GTEST OFF CACHE BOOL "" FORCE)
  add_subdirectory(${GALE_GTEST_SOURCE_DIR} ${CMAKE_BINARY_DIR}/googletest EXCLUDE_FROM_ALL)
  if(NOT TARGET GTest::gtest)
    add_library(GTest::gtest ALIAS gtest)
    add_library(GTest::gtest_main ALIAS gtest_main)
  endif()
endif()
include(GoogleTest)
