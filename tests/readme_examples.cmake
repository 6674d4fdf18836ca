# ctest readme_examples: README.md shows each example file verbatim, in a
# fenced block of its language, so the README's code is the code the tests
# compile and run. Run as cmake -DREADME=... -DEXAMPLES="a.c;b.cc;c.py" -P this.
file(READ ${README} readme)
foreach(example IN LISTS EXAMPLES)
  file(READ ${example} body)
  get_filename_component(ext ${example} LAST_EXT)
  if(ext STREQUAL ".c")
    set(lang c)
  elseif(ext STREQUAL ".py")
    set(lang python)
  else()
    set(lang cpp)
  endif()
  string(FIND "${readme}" "```${lang}\n${body}```\n" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "README.md does not show ${example} verbatim in a ```${lang} block: "
                        "paste the file's current text there (or change the file to match)")
  endif()
  message(STATUS "README.md shows ${example}")
endforeach()
