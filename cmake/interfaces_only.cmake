# IXGS_INSTALL_PYTHON=OFF (scripts/build_interfaces.sh into a virtual environment): only the interfaces
# are installed. Included from CMakeLists.txt after rosidl_generate_interfaces().
#
# rosidl_generator_py installs ${PYTHON_INSTALL_DIR}/ixgs_ros/ with an EMPTY __init__.py (plus its .pyc
# and an ixgs_ros-<version>.egg-info). In the virtual environment the Python sources are an editable
# install, so that generated __init__.py would shadow the real package. Remove it (and the egg-info, which
# would duplicate the editable install's metadata): .../site-packages/ixgs_ros then is a plain directory
# holding msg/ and the type-support extensions, which ixgs_ros/__init__.py adds to the package's __path__
# with pkgutil.extend_path.
install(CODE "
  set(_py \"\$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}/${PYTHON_INSTALL_DIR}\")
  file(GLOB _stale
    \"\${_py}/${PROJECT_NAME}/__init__.py\"
    \"\${_py}/${PROJECT_NAME}/__pycache__/__init__.*.pyc\"
    \"\${_py}/${PROJECT_NAME}-*.egg-info\")
  if(_stale)
    message(STATUS \"ixgs_ros: removing \${_stale} (interfaces-only install)\")
    file(REMOVE_RECURSE \${_stale})
  endif()
")
