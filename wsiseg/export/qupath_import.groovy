/*
 * Import wsiseg annotations into every image of the open QuPath project.
 *
 * For each image in the project, reads
 *     <OUT>/<slide stem>/annotations.geojson
 * (written by `wsiseg segment SLIDES... -o OUT`) and adds its annotations to
 * the image's object hierarchy, then saves the image data in the project.
 *
 * Usage (QuPath 0.4, 0.5, 0.6):
 *   1. Open the project holding the slides (File > Project > Open project).
 *   2. Open this file in Automate > Script editor and set OUT below to the
 *      folder given to `wsiseg segment -o`.
 *   3. Run > Run: the script loops over the project itself and saves each
 *      image's data. Images open in the viewer are changed on disk: reopen
 *      them to see the result.
 *   Per image instead ("Run for project", or headless
 *   `QuPath script --project=project.qpproj --save qupath_import.groovy`):
 *   set ONLY_CURRENT = true, so each call imports for its own image only and
 *   QuPath saves it.
 *
 * The slide stem is the image file name without its extension (".ome.tif"
 * and ".ome.tiff" count as one extension); the project's image name is tried
 * as well. Re-running replaces the annotations imported before (matched by
 * their ids, which wsiseg derives from slide, class and region), so it never
 * duplicates them; other annotations are left alone. Set REPLACE_ALL = true to
 * remove every existing annotation of an image before importing.
 */

import qupath.lib.io.PathIO

import java.nio.file.Paths

// ---- settings -------------------------------------------------------------
def OUT = '/path/to/wsiseg-out'
def FILE_NAME = 'annotations.geojson'
def REPLACE_ALL = false
def ONLY_CURRENT = false
// ---------------------------------------------------------------------------

def project = getProject()
if (project == null) {
    println 'Open a project first.'
    return
}
def outDir = new File(OUT)
if (!outDir.isDirectory()) {
    println "OUT is not a folder: ${outDir}"
    return
}

String stripExt(String name) {
    def lower = name.toLowerCase()
    for (ext in ['.ome.tiff', '.ome.tif', '.ome.zarr']) {
        if (lower.endsWith(ext))
            return name.substring(0, name.length() - ext.length())
    }
    int dot = name.lastIndexOf('.')
    return dot > 0 ? name.substring(0, dot) : name
}

int nImages = 0
int nObjects = 0
def entries = ONLY_CURRENT ? [getProjectEntry()] : project.getImageList()
for (entry in entries) {
    // Candidate stems: the image file's name, then the project's image name.
    def stems = new LinkedHashSet<String>()
    try {
        for (uri in entry.getURIs()) {
            def fileName = Paths.get(uri).getFileName()
            if (fileName != null)
                stems << stripExt(fileName.toString())
        }
    } catch (Exception e) {
        // Non-file URIs (e.g. remote images): fall back to the image name.
    }
    stems << stripExt(entry.getImageName())
    stems << entry.getImageName()
    def file = stems.collect { new File(new File(outDir, it), FILE_NAME) }.find { it.isFile() }
    if (file == null) {
        println "${entry.getImageName()}: no ${FILE_NAME} under ${outDir} (tried ${stems.join(', ')})"
        continue
    }

    def objects = PathIO.readObjects(file.toPath())
    def imageData = ONLY_CURRENT ? getCurrentImageData() : entry.readImageData()
    def hierarchy = imageData.getHierarchy()
    def old
    if (REPLACE_ALL) {
        old = hierarchy.getAnnotationObjects()
    } else {
        def ids = objects.collect { it.getID() } as Set
        old = hierarchy.getAnnotationObjects().findAll { it.getID() in ids }
    }
    if (!old.isEmpty())
        hierarchy.removeObjects(old, true)
    hierarchy.addObjects(objects)
    if (!ONLY_CURRENT)
        entry.saveImageData(imageData)
    nImages++
    nObjects += objects.size()
    println "${entry.getImageName()}: ${objects.size()} annotations from ${file}" +
            (old.isEmpty() ? '' : " (replaced ${old.size()})")
}
println "Imported ${nObjects} annotations into ${nImages} image(s)."
