# Work around a defect of the ROS 2 wheels on PyPI (ros-*-msgs, Kilted, cp311 manylinux).
#
# Their exported CMake targets <pkg>::<pkg>__rosidl_generator_py carry the include directories of the
# machine that built the wheels (/opt/python/cp311-cp311/include/python3.11 and .../numpy/_core/include).
# CMake refuses such an imported target at generate time ("includes non-existent path"), so generating
# interfaces that depend on e.g. std_msgs fails against those wheels.
#
# ixgs_fix_wheel_include_dirs() schedules, at the end of configuring the calling directory, a pass over
# every imported target of that directory: each INTERFACE_INCLUDE_DIRECTORIES entry that does NOT exist
# and looks like a Python or NumPy include directory is replaced by this interpreter's directories
# (find_package(Python3 COMPONENTS Interpreter Development NumPy)). Paths that exist, generator
# expressions and targets of a normal ROS installation are left untouched, so the fix is a no-op there.
include_guard(GLOBAL)

function(_ixgs_rewrite_include_dirs)
  find_package(Python3 REQUIRED COMPONENTS Interpreter Development NumPy)
  get_property(_targets DIRECTORY PROPERTY IMPORTED_TARGETS)
  set(_fixed "")
  foreach(_target IN LISTS _targets)
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_new "")
    set(_changed FALSE)
    foreach(_dir IN LISTS _dirs)
      if(_dir MATCHES "\\$<" OR EXISTS "${_dir}")
        list(APPEND _new "${_dir}")
      elseif(_dir MATCHES "numpy/(_core/|core/)?include/?$")
        list(APPEND _new ${Python3_NumPy_INCLUDE_DIRS})
        set(_changed TRUE)
      elseif(_dir MATCHES "/include/python[0-9.]+[a-z]*/?$")
        list(APPEND _new ${Python3_INCLUDE_DIRS})
        set(_changed TRUE)
      else()
        list(APPEND _new "${_dir}")  # unknown missing path: leave it, CMake reports it clearly
      endif()
    endforeach()
    if(_changed)
      list(REMOVE_DUPLICATES _new)
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new}")
      list(APPEND _fixed ${_target})
    endif()
  endforeach()
  if(_fixed)
    list(LENGTH _fixed _n)
    message(STATUS "ixgs_ros: rewrote Python/NumPy include dirs of ${_n} imported targets "
      "(wheel defect) to ${Python3_INCLUDE_DIRS};${Python3_NumPy_INCLUDE_DIRS}")
  endif()
endfunction()

macro(ixgs_fix_wheel_include_dirs)
  cmake_language(DEFER CALL _ixgs_rewrite_include_dirs)
endmacro()
