#!/usr/bin/env bash
# Builds the Java SDK with javac and jar only (no Maven, no network):
#   target/sessync-client.jar  the client (io.sessync.client), JDK 17, no dependencies
#   target/sessync-tomcat.jar  the Tomcat 10.1 manager (io.sessync.tomcat), compiled
#                              against Tomcat's jars, which Tomcat itself provides at run time
# `./build.sh test` also compiles the JUnit 5 tests and runs them with the JUnit console
# launcher against real `sessync node` processes ($SESSYNC_BIN, else
# ../../target/debug/sessync). Jar locations are Debian's (packages openjdk-17-jdk-headless,
# libtomcat10-embed-java, and for the tests junit5 and libtomcat10-java); override with
# TOMCAT_JAR, JUNIT_JAR and ANNOTATIONS_JAR.
set -euo pipefail
cd "$(dirname "$0")"

TOMCAT_JAR="${TOMCAT_JAR:-/usr/share/java/tomcat10-embed-core.jar}"
JUNIT_JAR="${JUNIT_JAR:-/usr/share/java/junit-platform-console-standalone.jar}"
# Embedded Tomcat scans servlets for jakarta.annotation, which Debian ships apart from embed-core.
ANNOTATIONS_JAR="${ANNOTATIONS_JAR:-/usr/share/java/tomcat10-annotations-api.jar}"
JAVAC_FLAGS=(--release 17 -encoding UTF-8 -Xlint:all,-serial,-classfile -Werror)

for jar in "$TOMCAT_JAR"; do
  [ -f "$jar" ] || { echo "missing $jar (apt-get install libtomcat10-embed-java)" >&2; exit 1; }
done

rm -rf target
mkdir -p target/client target/tomcat target/test-classes

# The client alone, with nothing but the JDK on the class path: proves it has no dependencies.
javac "${JAVAC_FLAGS[@]}" -d target/client $(find src/main/java/io/sessync/client -name '*.java')
jar --create --file target/sessync-client.jar -C target/client .

javac "${JAVAC_FLAGS[@]}" -cp target/client:"$TOMCAT_JAR" -d target/tomcat \
  $(find src/main/java/io/sessync/tomcat -name '*.java')
jar --create --file target/sessync-tomcat.jar -C target/tomcat .
# Every public item is documented: javadoc's lint, warnings as errors.
javadoc -quiet -Xdoclint:all -Werror -cp "$TOMCAT_JAR" -d target/javadoc -sourcepath src/main/java \
  -subpackages io.sessync >/dev/null
echo "built target/sessync-client.jar target/sessync-tomcat.jar target/javadoc"

if [ "${1:-}" = "test" ]; then
  [ -f "$JUNIT_JAR" ] || { echo "missing $JUNIT_JAR (apt-get install junit5)" >&2; exit 1; }
  [ -f "$ANNOTATIONS_JAR" ] || { echo "missing $ANNOTATIONS_JAR (apt-get install libtomcat10-java)" >&2; exit 1; }
  cp=target/sessync-client.jar:target/sessync-tomcat.jar:"$TOMCAT_JAR":"$ANNOTATIONS_JAR"
  javac "${JAVAC_FLAGS[@]}" -cp "$cp:$JUNIT_JAR" -d target/test-classes $(find src/test/java -name '*.java')
  # --fail-if-no-tests: a run that finds nothing is a failure, not a pass.
  java -jar "$JUNIT_JAR" --disable-banner --details=tree --details-theme=ascii --disable-ansi-colors --fail-if-no-tests \
    -cp "target/test-classes:$cp" --select-package io.sessync
fi
